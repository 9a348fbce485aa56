"""Whole-model benchmarks: the end-to-end table of issue 16 (``benchmarks/e2e.py``,
``binattn bench --model NAME``).

``models.py`` is the registry of benchmarked models (the real timm / transformers / diffusers
classes with random weights, one full and one small size each); ``e2e.py`` builds each model's
paths (eager SDPA, ``torch.compile``, binarized, the ``"binattn"`` backend, the drop-ins), times
and profiles them on CPU or CUDA and computes the table's columns. Importing this package imports
nothing heavy: timm, transformers and diffusers load when a model of theirs is built.
"""
