"""Decompositions of torch's fused transformer fast-path ops into plain ATen ops.

``nn.TransformerEncoderLayer`` (and ``nn.MultiheadAttention``) called under ``torch.no_grad()``
outside export run ``aten._transformer_encoder_layer_fwd`` / ``aten._native_multi_head_attention``,
one opaque op each. Given to ``aot_autograd(decompositions=...)`` these functions spell the same
layer out with ``F.scaled_dot_product_attention`` (or softmax·V where the weights are returned),
so the binarize pass finds the attention inside. Semantics follow torch's kernels: the merged
mask is a "masked" mask (bool True, or any nonzero float, means masked out); ``mask_type`` 0 is
[L, L], 1 is a [B, L] key-padding mask, 2 is [B, H, L, L].
What it does not: match or rewrite (``matchers``, ``rewrite``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

aten = torch.ops.aten


def _keep_mask(mask: Optional[Tensor], mask_type: Optional[int], batch: int,
               length: int) -> Optional[Tensor]:
    """torch's fast-path mask → SDPA's bool keep-mask [B or 1, H or 1, L, L]."""
    if mask is None:
        return None
    masked = mask if mask.dtype == torch.bool else mask != 0
    if mask_type == 1 or (mask_type is None and masked.dim() == 2 and
                          masked.shape == (batch, length) and batch != length):
        return ~masked.view(batch, 1, 1, length)
    if masked.dim() == 2:
        return ~masked.view(1, 1, length, length)
    return ~masked


def _self_attention(x: Tensor, key: Tensor, value: Tensor, num_heads: int, qkv_w: Tensor,
                    qkv_b: Tensor, proj_w: Tensor, proj_b: Tensor, keep: Optional[Tensor],
                    need_weights: bool = False, average: bool = True):
    b, n, e = x.shape
    w_q, w_k, w_v = qkv_w.chunk(3)
    b_q, b_k, b_v = qkv_b.chunk(3)
    d = e // num_heads

    def heads(t: Tensor, w: Tensor, bias: Tensor) -> Tensor:
        return F.linear(t, w, bias).view(b, -1, num_heads, d).transpose(1, 2)

    q, k, v = heads(x, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
    weights = None
    if need_weights:
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v
        weights = probs.mean(dim=1) if average else probs
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    out = F.linear(out.transpose(1, 2).reshape(b, n, e), proj_w, proj_b)
    return out, weights


def transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                                  proj_bias, use_gelu, norm_first, eps, norm_weight_1,
                                  norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1,
                                  ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None,
                                  mask_type=None):
    """``aten._transformer_encoder_layer_fwd`` in plain ops (batch-first src [B, L, E])."""
    keep = _keep_mask(mask, mask_type, src.shape[0], src.shape[1])
    act = F.gelu if use_gelu else F.relu

    def attend(x):
        return _self_attention(x, x, x, num_heads, qkv_weight, qkv_bias, proj_weight,
                               proj_bias, keep)[0]

    def feed_forward(x):
        return F.linear(act(F.linear(x, ffn_weight_1, ffn_bias_1)), ffn_weight_2, ffn_bias_2)

    norm1 = lambda x: F.layer_norm(x, (embed_dim,), norm_weight_1, norm_bias_1, eps)  # noqa: E731
    norm2 = lambda x: F.layer_norm(x, (embed_dim,), norm_weight_2, norm_bias_2, eps)  # noqa: E731
    if norm_first:
        x = src + attend(norm1(src))
        return x + feed_forward(norm2(x))
    x = norm1(src + attend(src))
    return norm2(x + feed_forward(x))


def native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                                proj_weight, proj_bias, mask=None, need_weights=True,
                                average_attn_weights=True, mask_type=None):
    """``aten._native_multi_head_attention`` in plain ops (batch-first [B, L, E])."""
    keep = _keep_mask(mask, mask_type, query.shape[0], key.shape[1])
    out, weights = _self_attention(query, key, value, num_head, qkv_weight, qkv_bias,
                                   proj_weight, proj_bias, keep, need_weights,
                                   average_attn_weights)
    return out, weights if weights is not None else query.new_empty((0,))


DECOMPOSITIONS = {
    aten._transformer_encoder_layer_fwd.default: transformer_encoder_layer_fwd,
    aten._native_multi_head_attention.default: native_multi_head_attention,
}
