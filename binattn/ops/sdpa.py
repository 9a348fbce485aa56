"""Binary attention through torch's fused SDPA on ±1 operands: the CUDA training path.

What it does: the forward and straight-through backward of ``binary_attention`` with the N×N
work done by ``torch.nn.functional.scaled_dot_product_attention`` (cuDNN, FlashAttention or the
memory-efficient kernel, whichever torch picks), so a training step on CUDA keeps no N×N tensor
and runs at fused-attention speed. The scores ``c·(b_q·b_kᵀ)``, ``c = s_q·s_k·scale`` per (b, h),
are the dot products of the operands ``q' = c·b_q`` and ``k' = b_k`` in v's dtype with SDPA's
scale set to 1: ``k'`` is exactly ±1, and every product ``c̃·(±1)`` is exact in the kernel's
float32 accumulator, so the scores differ from the reference's only by the rounding of ``c`` to
v's dtype (relative 2⁻⁹ in bf16). The backward is SDPA's own (FlashAttention's scheme: row
log-sum-exp saved, scores recomputed per block); the operands' gradients go through the STE
window and the mean|x| scales: one autograd function for the common case (sign binarizer,
mean|x| or no scales), the reference's own factors (``reference.score_factors``) otherwise.

Entry: :func:`binary_attention` (differentiable; ``binattn.ops.binary_attention_with`` takes it
on CUDA whenever a gradient is recorded, so the forward and the backward both run here). The
custom op's own backward is not routed here: its implementation runs with autograd excluded,
and a direct ``torch.ops.binattn`` call that records a gradient keeps the reference VJP.

What it does not: top-N, 8-bit P·V, sinks or a soft-cap (SDPA has none of them) nor float64
(the reference's exact gradcheck path) — :func:`unsupported` names the reason and the reference
runs; inference (the binary kernels: ``tvm_kernels``); CPU (its own TVM backward kernel).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import dispatch, reference
from .options import AttentionOptions, AttentionTensors

#: the name ``kernel_report()`` gives this path
NAME = "torch SDPA on ±1 operands"


def unsupported(q: torch.Tensor, tensors: AttentionTensors,
                options: AttentionOptions) -> Optional[str]:
    """Why this path cannot run these arguments (None: it can)."""
    if q.dtype == torch.float64:
        return "float64 (the reference is the exact path)"
    for name, value in (("top_n", options.top_n), ("pv_bits", options.pv_bits),
                        ("soft_cap", options.soft_cap), ("sinks", tensors.sinks)):
        if value is not None:
            return f"{name} (SDPA has no such option)"
    return None


def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: AttentionTensors,
          options: AttentionOptions) -> bool:
    """Whether :func:`binattn.ops.binary_attention_with` runs this path: CUDA tensors, a
    gradient to record, options it supports, the reference not forced."""
    if q.device.type != "cuda" or not torch.is_grad_enabled():
        return False
    if not any(t is not None and t.requires_grad for t in (q, k, v, tensors.bias)):
        return False
    return not dispatch.reference_forced() and unsupported(q, tensors, options) is None


class _SignOperands(torch.autograd.Function):
    """``(q', k', c)`` for the sign binarizer with mean|x| or no scales, forward and backward in
    a few fused passes over q and k (the common training case; an autograd composition of the
    same math costs several float32 passes more, which an eager step pays at short sequences):
    ``q' = c·b(q)``, ``k' = b(k)``, ``c = s_q·s_k·scale`` per (b, h) with s = mean|x| (or 1),
    b(x) = +1 for x ≥ 0 and −1 below. Backward: the STE window |x| ≤ clip, and the scales'
    gradient ``Σ g·b(q)`` through c to mean|q| and mean|k| (GQA: summed over a group's heads).
    Saves only q, k and per-(b, h) scalars. ``c`` is not differentiable (the NaN guard)."""

    @staticmethod
    def forward(ctx, q, k, mean_abs: bool, scale: float, clip: float, dtype: torch.dtype):
        hq = q.shape[-3]
        s_q, s_k = (_abs_mean(x) if mean_abs else
                    reference.magnitude_scale(_abs_mean(x), "none", None) for x in (q, k))
        coef = reference.nan_unless_finite(s_q * reference.expand_kv_heads(s_k, hq) * scale)
        c = coef.to(dtype)
        one = torch.ones((), dtype=dtype, device=k.device)
        ctx.save_for_backward(q, k, s_q, s_k, coef)
        ctx.mean_abs, ctx.scale, ctx.clip = mean_abs, scale, clip
        ctx.mark_non_differentiable(coef)
        return torch.where(q >= 0, c, -c), torch.where(k >= 0, one, -one), coef

    @staticmethod
    def backward(ctx, g_q, g_k, _):
        q, k, s_q, s_k, coef = ctx.saved_tensors
        dq = torch.where(q.abs() <= ctx.clip, g_q * coef.to(g_q.dtype), 0)
        dk = torch.where(k.abs() <= ctx.clip, g_k, 0)
        if ctx.mean_abs:
            hq, hkv = q.shape[-3], k.shape[-3]
            dcoef = torch.where(q >= 0, g_q, -g_q).sum(dim=(-2, -1), keepdim=True,
                                                       dtype=torch.float32) * ctx.scale
            ds_q = dcoef * reference.expand_kv_heads(s_k, hq)
            ds_k = (dcoef * s_q).unflatten(-3, (hkv, hq // hkv)).sum(-3)
            dq = dq.addcmul_(torch.sign(q), (ds_q / _size(q)).to(dq.dtype))
            dk = dk.addcmul_(torch.sign(k), (ds_k / _size(k)).to(dk.dtype))
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None, None


def _size(x: torch.Tensor) -> int:
    return x.shape[-2] * x.shape[-1]


def _abs_mean(x: torch.Tensor) -> torch.Tensor:
    """mean|x| per (b, h) in float32 ``[..., 1, 1]``, one pass, no float32 copy of x."""
    return torch.linalg.vector_norm(x, 1, dim=(-2, -1), keepdim=True,
                                    dtype=torch.float32) / _size(x)


def operands(q: torch.Tensor, k: torch.Tensor, tensors: AttentionTensors,
             options: AttentionOptions, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q', k', c)`` with ``q'·k'ᵀ`` the binary scores in ``dtype`` (k' with k's heads) and
    ``c`` the per-(b, h) coefficient ``[B, Hq, 1, 1]`` (NaN where q or k is not finite):
    :class:`_SignOperands` for the sign binarizer with mean|x| or no scales, else the
    reference's own factors (``reference.score_factors``: static scales, HAD's soft
    binarizers; float32, k expanded to the query heads)."""
    scale = reference.softmax_scale_of(q, options)
    if options.binarizer == "sign" and options.scale_mode != "static":
        return _SignOperands.apply(q, k, options.scale_mode == "mean_abs", scale,
                                   options.ste_clip, dtype)
    f = reference.score_factors(q, k, options, tensors.q_scale, tensors.k_scale)
    coef = reference.nan_unless_finite(f.s_q * f.s_k * f.softmax_scale)
    return (coef * f.b_q).to(dtype), f.b_k.to(dtype), coef.detach()


def _masks(tensors: AttentionTensors, options: AttentionOptions, n_q: int, n_k: int,
           dtype: torch.dtype, device: torch.device
           ) -> tuple[Optional[torch.Tensor], bool, Optional[torch.Tensor]]:
    """``(attn_mask, is_causal, dead)`` for SDPA: the bias (a table looked up) plus the mask,
    causality folded in where SDPA cannot take both; ``dead`` marks the query rows whose every
    key is masked (the reference gives them zeros; SDPA sees them unmasked, then they are
    zeroed, so no NaN reaches any gradient)."""
    bias = reference.dense_bias(tensors.bias, tensors.bias_index)
    attn_mask, causal = tensors.attn_mask, options.is_causal
    if bias is None and attn_mask is None:
        return None, causal, None
    if bias is None and attn_mask.dtype == torch.bool and not causal:
        dead = (~attn_mask).all(-1, keepdim=True)
        return attn_mask | dead, False, dead
    mask, dead = None, None
    if attn_mask is not None or (causal and bias is not None):
        mask = reference.additive_mask(attn_mask, causal, n_q, n_k, dtype, device)
        dead = torch.isneginf(mask).all(-1, keepdim=True) if attn_mask is not None else None
        mask = mask.masked_fill(dead, 0.0) if dead is not None else mask
        causal = False
    if bias is not None:
        mask = bias.to(dtype) if mask is None else bias.to(dtype) + mask
    if mask.shape[-1] != n_k or mask.stride(-1) != 1:   # the fused kernels read rows of keys
        mask = mask.expand(*mask.shape[:-1], n_k).contiguous()
    return mask, causal, dead


def binary_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     tensors: AttentionTensors, options: AttentionOptions) -> torch.Tensor:
    """Binary attention ``[B, Hq, Nq, Dv]`` in v's dtype, differentiable in q, k, v and the bias
    (validated 4-D inputs; options :func:`unsupported` accepts)."""
    dtype, hq = v.dtype, q.shape[-3]
    q_op, k_op, coef = operands(q, k, tensors, options, dtype)
    k_op, v = reference.expand_kv_heads(k_op, hq), reference.expand_kv_heads(v, hq)
    mask, causal, dead = _masks(tensors, options, q.shape[-2], k.shape[-2], dtype, q.device)
    out = F.scaled_dot_product_attention(q_op, k_op, v, attn_mask=mask, is_causal=causal,
                                         scale=1.0)
    out = out if dead is None else out.masked_fill(dead, 0.0)
    return out + _nan_guard(coef, tensors.bias).to(dtype)


def _nan_guard(coef: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """0, or NaN per (b, h) whose coefficient is NaN (and everywhere for a non-finite bias):
    added to the output, it keeps the NaN policy (DESIGN.md) whatever a fused kernel makes of
    NaN scores (torch's CPU kernel, for one, returns zeros for them). No gradient."""
    guard = coef.detach() * 0
    return guard if bias is None else guard + bias.detach().sum() * 0
