"""The CPU backward kernel's host side: tensors in, ``(dq, dk, dv, dbias, dsinks)`` out, and its
registration with the op dispatcher for ``binattn::binary_attention_backward``.

What it does: ``binary_attention_backward`` takes the library's backward arguments (``grad, q,
k, v, AttentionTensors, AttentionOptions, delta``) and returns what the library's reference
path returns (empty tensors for "no bias" / "no sinks"). ``delta`` (rowsum(grad ∘ out), from
the autograd formula) goes to the kernel, which then skips dP in its first pass; without it
(a direct call of the op) the kernel forms δ itself. Three TVM kernels run, and no torch pass
over q, k or the gradients but layouts and the GQA sums:

* the forward's ``prepare`` of q and k (``cpu_forward.prepare_qk``, ``operands``): the bits,
  the per-(b, h) scales s_q, s_k (``reference.backward_inputs``' scales, exactly those the
  forward kernel used) and the score multiplier;
* the backward kernel (``cpu.backward``): everything N×N, giving dQ̂, dK̂, dV per query head;
* the STE epilogue (``cpu.backward_ste``, once for q and once for k, ``input_grad``):
  ``reference._input_grad``'s window, ×s and mean|x| gradient, written over dQ̂ / dK̂ where
  their padding leaves them contiguous. Its build failing does not refuse the call: the
  epilogue then runs in torch (``reference._input_grad`` itself), with a warning and the reason
  in ``kernel_report()``.

GQA sums and dtypes are the reference's own ``reference.per_input_grads``. A bias table
(``bias_index``: relative positions) is gathered to its dense form first and its gradient
scattered back onto the table's rows (``reference.table_grad``). Bias + mask are
combined by the forward's ``_additive`` (one definition of the additive tensor); a bias
broadcast over batch or heads gets its gradient in ``nchunk`` partial copies
(``backward.unit_of``), summed here. ``binary_attention_backward_supports`` returns None or the
reason the reference runs instead: float64, soft binarizers, top-N, sinks, soft cap,
``pv_bits=8``, non-positive static scales, non-CPU or empty tensors, a
build failure of the backward kernel.

What it does not: the forward (``cpu.dispatch``), the N×N math (``cpu.backward``), the STE math
(``cpu.backward_ste``, ``reference``), or any math of its own beyond padding, layouts and the NaN
policy of the kernel's outputs.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ...ops import dispatch, reference
from ...ops.options import AttentionOptions, AttentionTensors
from ...schedules.cpu.backward import DEFAULT_BACKWARD, DIM_BUCKET, BackwardKnobs
from ..cache import CacheKey
from . import backward as cpu_backward, backward_ste, build as cpu_build
from . import dispatch as cpu_forward, threads
from .target import target_key

OP = "binary_attention_backward"
NAME = "tvm-llvm binary_attention_backward"
_built: dict[tuple, Any] = {}
_warned: set[str] = set()


def backward_kernel(wl: cpu_backward.BackwardWorkload,
                    knobs: BackwardKnobs = DEFAULT_BACKWARD) -> Any:
    """The packed function of ``wl``'s backward kernel (built once, through the kernel cache)."""
    memo = (wl, knobs, id(cpu_build.kernel_cache()))
    if memo not in _built:
        key = CacheKey("attention_backward", target_key(), wl.tag(), "float32", knobs.key())
        _built[memo] = cpu_build._get(key, lambda: cpu_backward.backward_module(wl, knobs))
    return _built[memo]


def ste_kernel(scale_mode: str, dtype: str) -> Any:
    """The packed function of the STE epilogue (``cpu.backward_ste``) for ``scale_mode`` and x of
    ``dtype`` (built once, through the kernel cache)."""
    memo = ("ste", scale_mode, dtype, id(cpu_build.kernel_cache()))
    if memo not in _built:
        key = CacheKey("attention_backward_ste", target_key(),
                       f"ste{backward_ste.KERNEL_VERSION}_{scale_mode}", dtype,
                       f"lanes{backward_ste.LANES}")
        _built[memo] = cpu_build._get(key, lambda: backward_ste.ste_module(scale_mode, dtype))
    return _built[memo]


def _bias4(shape: Optional[tuple[int, ...]]) -> Optional[tuple[int, ...]]:
    """A bias shape as 4-D ``(B|1, H|1, Nq|1, Nk|1)``."""
    return None if shape is None else (1,) * (4 - len(shape)) + tuple(shape)


def workload(q: torch.Tensor, v: torch.Tensor, add_shape: Optional[tuple[int, ...]],
             bias_shape: Optional[tuple[int, ...]], causal: bool,
             delta: bool = False) -> cpu_backward.BackwardWorkload:
    """The kernel specialisation of a call (``add_shape``: the 4-D additive tensor's;
    ``bias_shape``: the dense bias's, None without one; ``delta``: δ is given)."""
    bias4 = _bias4(bias_shape)
    return cpu_backward.BackwardWorkload(
        reference.num_words(q.shape[-1]), cpu_forward._round_up(q.shape[-1], DIM_BUCKET),
        cpu_forward._round_up(v.shape[-1], DIM_BUCKET), bool(causal),
        None if add_shape is None else tuple(n == 1 for n in add_shape[:3]),
        None if bias4 is None else tuple(n == 1 for n in bias4), bool(delta),
        cpu_forward.TVM_DTYPES[v.dtype])


def _pad_dim(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """x zero-padded at the end of ``dim`` to ``size``."""
    extra = size - x.shape[dim]
    if extra == 0:
        return x
    return F.pad(x, [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra])


def _per_head(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A per-(b, h) factor ``[.., 1, 1]`` as float32 ``[B, Hq]``."""
    return torch.broadcast_to(x, (batch, heads, 1, 1)).reshape(batch, heads).to(
        torch.float32).contiguous()


class Operands(NamedTuple):
    """q's and k's sign bits as the kernel reads them (per query head, padded: ``q_bits [B, Hq,
    NQ, W]``, ``k_bits [B, Hq, W, NK]``), the scales s_q, s_k ``[B, Hq, 1, 1]`` float32 and the
    score multiplier ``coef [B, Hq]`` (s_q·s_k·softmax scale, NaN where not finite)."""

    q_bits: torch.Tensor
    k_bits: torch.Tensor
    s_q: torch.Tensor
    s_k: torch.Tensor
    coef: torch.Tensor


def operands(q: torch.Tensor, k: torch.Tensor, tensors: AttentionTensors,
             options: AttentionOptions, knobs: BackwardKnobs = DEFAULT_BACKWARD) -> Operands:
    """:class:`Operands` from the forward's own ``prepare`` call (one TVM call: the words, the
    scales ``reference.backward_inputs`` defines — ``qk_scale`` of q and of k expanded to the
    query heads, NaN for a (b, h) whose x holds a NaN or ±Inf — and the multiplier), k's words
    expanded to the query heads under GQA."""
    batch, heads = q.shape[:2]
    prep = cpu_forward.prepare_qk(q, k, tensors, options,
                                  cpu_forward._round_up(q.shape[-2], knobs.block_q),
                                  cpu_forward._round_up(k.shape[-2], knobs.block_k))
    k_bits = prep.k_bits
    if k_bits.shape[1] != heads:
        k_bits = reference.expand_kv_heads(k_bits, heads).contiguous()
    return Operands(prep.q_bits, k_bits, prep.s_q.view(batch, heads, 1, 1),
                    prep.s_k.view(batch, heads, 1, 1), prep.coef)


def binary_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, tensors: AttentionTensors,
                              options: AttentionOptions,
                              delta: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """The STE backward through the kernels (see the module docstring)."""
    bias = reference.dense_bias(tensors.bias, tensors.bias_index)   # a table gathered
    mask = tensors.attn_mask
    n_q, head_dim, n_k = q.shape[-2], q.shape[-1], k.shape[-2]
    add = cpu_forward._additive(bias, mask, n_q, n_k)
    ops = operands(q, k, tensors, options)
    dq_hat, dk_hat, dv, dbias = _run_kernel(grad, q, k, v, ops, add, bias, options, delta)
    if bias is not None or (mask is not None and mask.is_floating_point()):
        _nan_policy((dq_hat, dk_hat, dv), add, n_q, n_k)
    dq = input_grad(q, ops.s_q, dq_hat, options)
    dk = input_grad(k, ops.s_k, dk_hat, options)
    dq, dk, dv = reference.per_input_grads(dq, dk, dv, q, k, v)
    db = q.new_empty((0,)) if bias is None else _bias_grad(dbias, bias, n_q, n_k)
    if tensors.bias_index is not None:   # the table's rows gather their entries' gradients
        db = reference.table_grad(db, tensors.bias_index, tensors.bias)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), db, q.new_empty((0,))


def input_grad(x: torch.Tensor, s: torch.Tensor, d_hat: torch.Tensor,
               options: AttentionOptions) -> torch.Tensor:
    """The gradient to ``x`` (q or k, ``[B, H|Hkv, N, D]``) per query head, float32, from
    ``d_hat`` (dQ̂ or dK̂ ``[B, Hq, N, D]``, a slice of the kernel's padded output) and the scale
    ``s [B, Hq, 1, 1]``: ``reference._input_grad`` through the STE kernel, written over
    ``d_hat`` where it is contiguous (else into a new tensor); if that kernel failed to build,
    through ``reference._input_grad`` itself (said once as a warning, and in
    ``kernel_report()``)."""
    dtype = cpu_forward.TVM_DTYPES[x.dtype]
    reason = cpu_forward.try_build(("backward_ste", options.scale_mode, dtype),
                                   lambda: ste_kernel(options.scale_mode, dtype))
    if reason:
        _say_torch_epilogue(reason)
        xf = reference.expand_kv_heads(x.to(torch.float32), d_hat.shape[-3])
        b_in = reference.binarizer_input(xf, s, options.scale_mode)
        return reference._input_grad(xf, s, b_in, d_hat, options, torch.empty_like(xf))
    out = d_hat if d_hat.is_contiguous() else torch.empty(d_hat.shape)
    batch, heads = d_hat.shape[:2]
    ste_kernel(options.scale_mode, dtype)(cpu_forward.unit_last(x), d_hat,
                                          _per_head(s, batch, heads), out, options.ste_clip)
    return out


def _say_torch_epilogue(reason: str) -> None:
    """Record (and warn once per reason) that the STE epilogue ran in torch."""
    dispatch.record(OP, "cpu", f"{NAME} (STE epilogue in torch: {reason})")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"binattn: {OP} on cpu runs its STE epilogue in torch: {reason}",
                      RuntimeWarning, stacklevel=3)


def _run_kernel(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                ops: Operands, add: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                options: AttentionOptions,
                delta: Optional[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The kernel on the packed bits (padded) and v, dO in place: ``(dq̂, dk̂, dv)`` per query
    head, unpadded, and the padded bias-gradient copies."""
    batch, heads, n_q, _ = q.shape
    wl = workload(q, v, None if add is None else add.shape,
                  None if bias is None else bias.shape, options.is_causal, delta is not None)
    fn = backward_kernel(wl, DEFAULT_BACKWARD)
    nq_pad, nk_pad = ops.q_bits.shape[2], ops.k_bits.shape[3]
    n_k, head_dim, value_dim = k.shape[-2], q.shape[-1], v.shape[-1]
    scale = reference.softmax_scale_of(q, options)
    args = [ops.q_bits, ops.k_bits, _per_head(scale * ops.s_q, batch, heads),
            _per_head(scale * ops.s_k, batch, heads),
            cpu_forward.unit_last(v), cpu_forward.unit_last(grad.to(v.dtype)),
            ops.coef, _padded_add(add, nq_pad, nk_pad), _padded_delta(delta, nq_pad)]
    outs = [torch.empty(batch, heads, n_q, head_dim), torch.empty(batch, heads, n_k, head_dim),
            torch.empty(batch, heads, n_k, value_dim)]
    nslot, nchunk = cpu_backward.unit_of(wl, batch, heads, threads.count())
    outs.append(_bias_grad_buffer(bias, nchunk, nq_pad, nk_pad))
    fn(*args, *outs, n_k, head_dim, n_q, value_dim, nslot, nchunk)
    return tuple(outs)


def _padded_delta(delta: Optional[torch.Tensor], nq_pad: int) -> torch.Tensor:
    """δ ``[B, H, Nq]`` as float32 with rows padded to ``nq_pad`` (a 1-element stand-in if
    none)."""
    if delta is None:
        return torch.zeros(1, 1, 1)
    return _pad_dim(delta.to(torch.float32), 2, nq_pad).contiguous()


def _padded_add(add: Optional[torch.Tensor], nq_pad: int, nk_pad: int) -> torch.Tensor:
    """The additive tensor padded to the kernel's rows and keys (a 1-element stand-in if none)."""
    if add is None:
        return torch.zeros(1, 1, 1, 1)
    if add.shape[2] != 1:
        add = _pad_dim(add, 2, nq_pad)
    return _pad_dim(add, 3, nk_pad).contiguous()


def _bias_grad_buffer(bias: Optional[torch.Tensor], nchunk: int, nq_pad: int,
                      nk_pad: int) -> torch.Tensor:
    """Zeros ``[nchunk, B|1, H|1, Nq|1, Nk|1]`` (the bias's 4-D shape, padded) that the kernel
    adds dS into; 1 element without a bias."""
    bias4 = _bias4(None if bias is None else bias.shape)
    if bias4 is None:
        return torch.zeros(1, 1, 1, 1, 1)
    return torch.zeros(nchunk, bias4[0], bias4[1], nq_pad if bias4[2] != 1 else 1,
                       nk_pad if bias4[3] != 1 else 1)


def _bias_grad(dbias: torch.Tensor, bias: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """The bias's gradient from the kernel's partial copies: summed, unpadded, bias-shaped."""
    total = dbias.sum(0)[:, :, :n_q, :n_k]
    return total.reshape(bias.shape).to(bias.dtype).contiguous()


def _nan_policy(grads: tuple[torch.Tensor, ...], add: torch.Tensor, n_q: int,
                n_k: int) -> None:
    """NaN (in place) over every gradient of a (b, h) with a NaN in its bias + mask, as the
    reference gives them (the kernel's max and exponential skip NaN scores; a non-finite
    score multiplier it handles itself). No host read (the NaN policy, ``ops.validation``)."""
    bad = torch.isnan(add[:, :, :n_q, :n_k]).flatten(2).any(-1)[:, :, None, None]
    for g in grads:
        g.masked_fill_(bad, float("nan"))


def _option_reason(tensors: AttentionTensors, options: AttentionOptions,
                   n_k: int) -> Optional[str]:
    option = cpu_forward.unbuilt_option(tensors, options, n_k)
    if option:
        return f"{option} has no backward kernel"
    if options.pv_bits == 8:
        return "pv_bits=8 has no backward kernel"
    return None


def binary_attention_backward_supports(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                       v: torch.Tensor, tensors: AttentionTensors,
                                       options: AttentionOptions,
                                       delta: Optional[torch.Tensor] = None) -> Optional[str]:
    """None when the kernel runs this call, else the reason the reference runs."""
    reason = (cpu_forward.tensor_reason(tensors, options, grad, q, k, v)
              or _option_reason(tensors, options, k.shape[-2]))
    if reason:
        return reason
    bias_shape = None if tensors.bias is None else tuple(tensors.bias.shape)
    if tensors.bias_index is not None:   # a table, gathered to [Ht, Nq, Nk] by the call
        bias_shape = (bias_shape[1], *tensors.bias_index.shape)
    add_shape = cpu_forward._add_shape(bias_shape, tensors.attn_mask)
    if delta is not None and (delta.device.type != "cpu" or
                              delta.shape != (*q.shape[:-1],)):
        return f"delta {tuple(delta.shape)} on {delta.device.type}, not [B, Hq, Nq] on cpu"
    wl = workload(q, v, add_shape, bias_shape, options.is_causal, delta is not None)
    return (cpu_forward.prepare_built(q, options.scale_mode)   # ``operands`` calls it
            or cpu_forward.try_build(("backward", wl), lambda: backward_kernel(wl)))


dispatch.register_kernel(OP, "cpu", dispatch.Kernel(NAME, binary_attention_backward,
                                                    binary_attention_backward_supports))
