"""Knobs of the CUDA attention kernels and their packaged tuning database (``attention``,
``cuda_tuned.json``)."""
