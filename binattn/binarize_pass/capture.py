"""Capture: a model (nn.Module, ExportedProgram or GraphModule) → a trainable ATen GraphModule.

What it does: ``torch.export`` (non-strict; batch dim dynamic where the model allows it, or the
caller's ``dynamic_shapes``), then
unlifts to a plain ``torch.fx.GraphModule`` whose parameters and buffers are the model's own
(``named_parameters()`` as before, ``.train()``/``.eval()`` work). Export failures become a
one-line ``UserError``. A model whose config asks for a KV cache (Hugging Face decoders:
``config.use_cache``) is captured with ``use_cache=False`` (restored afterwards): a cache object
is no tensor output. What it does not: look for attention (``matchers``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import fx, nn

from ..errors import UserError


def default_dynamic_shapes(example_inputs: tuple) -> tuple:
    """Dim.AUTO on dim 0 of every tensor input with a batch of 2 or more (export keeps it
    static where it must; a batch of 1 would be specialized anyway)."""
    def spec(x: Any):
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] > 1:
            return {0: torch.export.Dim.AUTO}
        return None
    return tuple(torch.utils._pytree.tree_map(spec, x) if not isinstance(x, torch.Tensor)
                 else spec(x) for x in example_inputs)


@contextlib.contextmanager
def without_kv_cache(model: Any) -> Iterator[None]:
    """``model.config.use_cache = False`` within the block (Hugging Face decoders)."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False):
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def _hint(err: BaseException) -> str:
    text = str(err)
    if "Cache" in text and ("not a known type" in text or "pytree" in text):
        return (" (the output holds a key/value cache: call the model with use_cache=False, "
                "e.g. model.config.use_cache = False)")
    return ""


def export_program(model: nn.Module, example_inputs: tuple, *,
                   example_kwargs: dict | None = None, dynamic_batch: bool = True,
                   dynamic_shapes: Any = None) -> torch.export.ExportedProgram:
    """``torch.export.export(strict=False)`` with a clear UserError when the model won't export.

    ``dynamic_shapes`` (torch.export's argument) replaces the dynamic-batch default; when the
    model does not export with it, it is exported with static shapes."""
    kwargs = dict(example_kwargs or {})
    dynamic = dynamic_shapes
    if dynamic is None and dynamic_batch and not kwargs:
        dynamic = default_dynamic_shapes(example_inputs)
    try:
        with without_kv_cache(model):
            return torch.export.export(model, tuple(example_inputs), kwargs, strict=False,
                                       dynamic_shapes=dynamic)
    except Exception as err:  # noqa: BLE001 (any export failure is reported the same way)
        if dynamic is not None:
            try:
                with without_kv_cache(model):
                    return torch.export.export(model, tuple(example_inputs), kwargs,
                                               strict=False)
            except Exception as err2:  # noqa: BLE001
                err = err2
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"the model failed to export with torch.export: "
                        f"{type(err).__name__}: {first}{_hint(err)}") from err


def to_graph_module(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """Unlift an ExportedProgram to a plain, trainable GraphModule (train/eval allowed)."""
    unlifted = program.module()
    gm = fx.GraphModule(unlifted, unlifted.graph, class_name="BinarizedModule")
    gm.meta.update(getattr(unlifted, "meta", {}))
    return gm


def capture(model: nn.Module | torch.export.ExportedProgram, example_inputs: tuple, *,
            example_kwargs: dict | None = None, dynamic_batch: bool = True,
            dynamic_shapes: Any = None) -> fx.GraphModule:
    """The model's ATen graph as a trainable GraphModule (see module docstring)."""
    if isinstance(model, torch.export.ExportedProgram):
        return to_graph_module(model)
    if not isinstance(model, nn.Module):
        raise UserError(f"binarize needs an nn.Module or ExportedProgram, got "
                        f"{type(model).__name__}")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    program = export_program(model, tuple(example_inputs), example_kwargs=example_kwargs,
                             dynamic_batch=dynamic_batch, dynamic_shapes=dynamic_shapes)
    return to_graph_module(program)
