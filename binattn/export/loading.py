"""MODEL argument → binarized GraphModule + example inputs (shared by ``binattn asic`` and
``binattn export``).

What it does: ``binattn.model_io.load_model`` (safe loading, example inputs), then
``binattn.binarize`` with the given top-N / 8-bit P·V options; a model that is already a
binarized GraphModule passes through. What it does not: train (a freshly binarized model has
untrained biases — fine for costing and for checking an export, not for accuracy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..errors import UserError


def load_binarized(path: str | Path, *, trust_pickle: bool = False,
                   input_shape: Optional[Sequence[int]] = None, top_n: Optional[int] = None,
                   pv_bits: Optional[int] = None, dynamic_batch: bool = True,
                   inputs: Optional[Sequence[Any]] = None
                   ) -> tuple[torch.fx.GraphModule | torch.export.ExportedProgram, tuple]:
    """Load MODEL and rewrite its attention; ``(gm, example_inputs)``.

    A .pt2 that already holds binattn attention (``binattn train``/``convert`` output) is
    returned as the ExportedProgram itself, trained biases and options included; ``top_n`` and
    ``pv_bits`` then do not apply. ``inputs``: named ``InputSpec``s (``--input``).
    ``dynamic_batch=False`` pins every dim (ONNX/MLIR export); else the loaded model's dynamic
    dims (batch, and sequence for Hugging Face text inputs) are kept.
    """
    from ..binarize_pass import BinarizeConfig, binarize, find_sites
    from ..hw_targets.sites import binattn_attention_nodes
    from ..model_io import load

    loaded = load(path, trust_pickle=trust_pickle, input_shape=input_shape, inputs=inputs)
    model, inputs = loaded.model, loaded.inputs
    if isinstance(model, torch.export.ExportedProgram) and binattn_attention_nodes(model):
        return model, inputs
    if isinstance(model, torch.fx.GraphModule) and find_sites(model):
        return model, inputs
    config = BinarizeConfig(top_n=top_n, pv_bits=pv_bits, dynamic_batch=dynamic_batch)
    dynamic = loaded.dynamic_shapes if dynamic_batch else None
    with loaded.naming_inputs():
        gm = binarize(model, inputs, config, dynamic_shapes=dynamic)
    if not find_sites(gm):
        raise UserError(f"{path}: no attention site could be rewritten "
                        "(run `binattn inspect` to see why)")
    return gm, inputs
