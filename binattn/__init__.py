"""binattn: 1-bit query/key attention for PyTorch models.

Public API: ``binattn.ops`` (custom ops), and, as their issues land, ``binarize``, ``inspect``,
``BinarizeConfig``, the ``"binattn"`` torch.compile backend, training, TVM kernels and the ASIC
target descriptor; ``binattn.hf`` and ``binattn.diffusers`` (drop-ins, imported on first use).
Importing binattn registers the ``torch.ops.binattn`` ops; it never imports the TVM compiler
(kernels load lazily on first use), transformers or diffusers.
"""
from __future__ import annotations

from ._version import __version__

from . import ops  # noqa: E402  (registers torch.ops.binattn.*)
from .binarize_pass import BinarizeConfig, binarize, inspect  # noqa: E402
from .backend import register_if_dynamo_loaded  # noqa: E402

register_if_dynamo_loaded()  # torch.compile backend "binattn" (else via its entry point)

__all__ = ["ops", "__version__", "binarize", "inspect", "BinarizeConfig"]

_LAZY = ("hf", "diffusers")   # drop-ins: they import transformers / diffusers, so only on use


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
