"""Knobs of the CPU kernels (``knobs``)."""
