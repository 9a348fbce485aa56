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
window and the mean|x| scales by autograd, as in the reference (``reference.score_factors``).

Two entries: :func:`binary_attention` (differentiable; ``binattn.ops.binary_attention_with``
takes it on CUDA whenever a gradient is recorded, so the forward and the backward both run
here) and :func:`backward`, the CUDA kernel of ``binattn::binary_attention_backward`` that the
custom op's registered autograd reaches (a graph rewritten by the backend, a direct
``torch.ops.binattn`` call): it recomputes the forward here, then its VJP.

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


class _SignTimes(torch.autograd.Function):
    """``m·b(x)`` in ``dtype`` with b(x) = +1 for x ≥ 0, −1 below (NaN: −1, as the reference),
    the gradient ``g·m`` inside the STE window |x| ≤ clip and Σ g·b(x) to ``m`` (per (b, h)).
    ``m`` None means 1. One where over x: no float32 copy of x, only x is saved."""

    @staticmethod
    def forward(ctx, x, m, clip: float, dtype: torch.dtype):
        positive = x >= 0
        one = torch.ones((), dtype=dtype, device=x.device) if m is None else m.to(dtype)
        ctx.save_for_backward(x, m)
        ctx.clip = clip
        return torch.where(positive, one, -one)

    @staticmethod
    def backward(ctx, grad):
        x, m = ctx.saved_tensors
        inside = x.abs() <= ctx.clip
        dm = None
        if m is not None and ctx.needs_input_grad[1]:
            signed = torch.where(x >= 0, grad, -grad)
            dm = signed.sum(dim=(-2, -1), keepdim=True, dtype=torch.float32)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = grad * inside if m is None else grad * m.to(grad.dtype) * inside
            dx = dx.to(x.dtype)
        return dx, dm, None, None


def _magnitude(x: torch.Tensor, options: AttentionOptions,
               static: Optional[torch.Tensor]) -> torch.Tensor:
    """s per (b, h) in float32 ``[..., 1, 1]``: mean|x| (one pass, no float32 copy of x), or
    ``reference.magnitude_scale``'s static value / 1 with its NaN guard."""
    abs_sum = torch.linalg.vector_norm(x, 1, dim=(-2, -1), keepdim=True, dtype=torch.float32)
    if options.scale_mode == "mean_abs":
        return abs_sum / (x.shape[-2] * x.shape[-1])
    return reference.magnitude_scale(abs_sum.detach(), options.scale_mode, static)


def _operand(x_in: torch.Tensor, m: Optional[torch.Tensor], options: AttentionOptions,
             dtype: torch.dtype) -> torch.Tensor:
    """``m·binarize(x_in)`` in ``dtype`` (differentiable in both)."""
    if options.binarizer == "sign":
        return _SignTimes.apply(x_in, m, options.ste_clip, dtype)
    value = reference.binarize_as(x_in.float(), options)
    return (value if m is None else m * value).to(dtype)


def operands(q: torch.Tensor, k: torch.Tensor, tensors: AttentionTensors,
             options: AttentionOptions, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q', k', c)`` with ``q'·k'ᵀ`` the binary scores in ``dtype`` (k' with k's heads) and
    ``c`` the per-(b, h) coefficient ``[B, Hq, 1, 1]`` (NaN where q or k is not finite)."""
    hq = q.shape[-3]
    s_q = _magnitude(q, options, tensors.q_scale)
    s_k = _magnitude(k, options, tensors.k_scale)
    static = options.scale_mode == "static"
    q_in, k_in = (q / s_q, k / s_k) if static else (q, k)
    coef = reference.nan_unless_finite(s_q * reference.expand_kv_heads(s_k, hq)
                                       * reference.softmax_scale_of(q, options))
    return _operand(q_in, coef, options, dtype), _operand(k_in, None, options, dtype), coef


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


def _backward_support(grad, q, k, v, tensors, options, delta=None) -> Optional[str]:
    return unsupported(q, tensors, options)


def backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             tensors: AttentionTensors, options: AttentionOptions,
             delta: Optional[torch.Tensor] = None):
    """``binattn::binary_attention_backward`` on CUDA: :func:`binary_attention` recomputed
    under autograd, then its VJP ``(dq, dk, dv, dbias, dsinks)`` (empty dbias / dsinks for
    none, as the op returns them). ``delta`` is not needed (SDPA forms its own)."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        bias = tensors.bias
        if bias is not None:
            bias = bias.detach().requires_grad_()
            leaves.append(bias)
        out = binary_attention(*leaves[:3], tensors._replace(bias=bias), options)
        grads = torch.autograd.grad(out, leaves, grad)
    dbias = grads[3].contiguous() if bias is not None else q.new_empty((0,))
    return (grads[0].contiguous(), grads[1].contiguous(), grads[2].contiguous(), dbias,
            q.new_empty((0,)))


dispatch.register_kernel("binary_attention_backward", "cuda",
                         dispatch.Kernel(NAME, backward, _backward_support))
