"""schedules for CUDA."""
