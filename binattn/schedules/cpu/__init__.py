"""schedules for CPU."""
