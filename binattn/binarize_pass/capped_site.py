"""``SoftCappedSite``: a rewritten site whose attention soft-caps its scores (Gemma-2).

What it does: in ``mode = "float"`` computes exactly what the model did,
``softmax(c·tanh(scale·q·kᵀ / c) + mask)·v``; in binary mode runs ``BinaryAttentionSite``
unchanged, so the cap is dropped there — ``binary_attention`` has no cap option (docs/pass.md,
"Logit soft-capping", says why that is the mapping and what it changes; the report says so
beside the site). What it does not: find the cap (``matchers.forms.soft_cap``) or change the op.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import reference
from .site import BinaryAttentionSite


class SoftCappedSite(BinaryAttentionSite):
    """A ``BinaryAttentionSite`` that keeps the model's logit soft-cap ``soft_cap`` in float
    mode (the teacher of self-distillation is then the original model)."""

    def __init__(self, *, soft_cap: float, **kwargs):
        super().__init__(**kwargs)
        self.soft_cap = float(soft_cap)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, soft_cap={self.soft_cap:g}"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None,
                bias_index: Optional[torch.Tensor] = None):
        """As ``BinaryAttentionSite.forward``; float mode applies the cap."""
        if self.mode != "float":
            return super().forward(q, k, v, attn_mask, bias, bias_index)
        out, probs = capped_attention(q, k, v, attn_mask, self.is_causal, self.scale,
                                      self.soft_cap)
        return self._finish(out, probs, q, v)


def capped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attn_mask: Optional[torch.Tensor], is_causal: bool,
                     scale: Optional[float], cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(cap·tanh(scale·q·kᵀ / cap) + mask)·v`` and its probabilities (GQA: k/v heads
    repeated as the op does)."""
    if q.dim() == 4 and q.shape[1] != k.shape[1]:
        k, v = (reference.expand_kv_heads(x, q.shape[1]) for x in (k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.tanh((q @ k.transpose(-2, -1)) * scale / cap) * cap
    mask = reference.additive_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2],
                                   scores.dtype, q.device)
    probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    return probs @ v, probs
