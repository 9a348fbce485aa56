"""Small functions the rewritten graph calls between the original nodes and a site.

``merge_masks`` turns the mask parts a matcher found (SDPA masks, additive masks, masked_fill /
where conditions) into the one ``attn_mask`` the op takes: a lone bool keep-mask stays bool,
anything else becomes one additive float mask (−inf where masked). What it does not: math of
attention (``binattn.ops.reference``).
"""
from __future__ import annotations

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
