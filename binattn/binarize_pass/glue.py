"""Small functions the rewritten graph calls between the original nodes and a site.

``merge_masks`` turns the mask parts a matcher found (SDPA masks, additive masks, masked_fill /
where conditions) into the one ``attn_mask`` the op takes: a lone bool keep-mask stays bool,
anything else becomes one additive float mask (−inf where masked); ``scores_shaped`` brings a
mask part found at another view of the scores (Bloom's 3-D ALiBi, Swin's 5-D window mask,
DeBERTa's position terms) to the site's scores. What it does not: math of attention
(``binattn.ops.reference``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def _as_additive(mask: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    keep = mask if kind in ("mask", "keep") else ~mask
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, float("-inf"))


def merge_masks(*masks: torch.Tensor, kinds: tuple[str, ...]) -> torch.Tensor:
    """One attn_mask (bool True = keep, or additive float) from the parts found in the graph."""
    if len(masks) == 1 and masks[0].dtype == torch.bool:
        return masks[0] if kinds[0] in ("mask", "keep") else ~masks[0]
    if len(masks) == 1:
        return masks[0]
    dtype = next((m.dtype for m in masks if m.dtype != torch.bool), torch.float32)
    total = _as_additive(masks[0], kinds[0], dtype)
    for mask, kind in zip(masks[1:], kinds[1:]):
        total = total + _as_additive(mask, kind, dtype)
    return total


def _view_shape(shape: Sequence[Any], spec: Sequence[Any], op: str) -> list[Any]:
    """The shape ``reshape(spec)`` / ``expand(spec)`` gives a tensor of ``shape`` (-1 resolved)."""
    spec = list(spec)
    if op == "expand":
        pad = len(spec) - len(shape)
        return [shape[i - pad] if s == -1 else s for i, s in enumerate(spec)]
    if -1 in spec:
        known = math.prod(s for s in spec if s != -1)
        spec[spec.index(-1)] = math.prod(shape) // known
    return spec


def scores_shaped(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
                  before: Sequence = (), after: Sequence = (),
                  factor: float = 1.0) -> torch.Tensor:
    """A mask part as the site's scores see it: broadcast to the scores ``a @ b`` viewed by
    ``before`` (where it was added), then viewed as the scores were by ``after``, times
    ``factor`` (see ``matchers.base.MaskPrep``)."""
    shape = [*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1]]
    for op, spec in before:
        shape = _view_shape(shape, spec, op)
    out = mask.expand(shape)
    for op, spec in after:
        out = out.expand(spec) if op == "expand" else out.reshape(spec)
    return out * factor if factor != 1.0 else out
