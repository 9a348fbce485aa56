"""CPU kernels of binattn's ops: TVM-built (LLVM) functions registered with the op dispatcher.

Imported lazily by ``binattn.ops.dispatch`` on the first CPU call. Registers one kernel per op
(``sign_pack``, ``popcount_scores``, ``binary_attention``) whose ``fn`` takes exactly the
reference's arguments (for attention: q, k, v, ``AttentionTensors``, ``AttentionOptions``) and
whose ``supports`` returns None or a short reason. A TVM build failure is a reason too ("build
failed: …"), so the op falls back to the reference with the dispatcher's one-time warning
instead of raising. Tensors reach TVM zero-copy through DLPack.

No copies of q, k, v or the output: the kernels read q, k, v in their own dtype through their
strides (any stride on B, H, N; unit stride on D — fused-QKV ``permute``/``unbind`` views, HF's
``transpose(1, 2)``, a GQA ``expand`` with stride 0 on H) and the attention kernels write
``reference.empty_output(q, v)`` itself (its true Nq rows and Dv columns, in v's dtype). Per call,
one TVM call (``prepare_qk``: ``kernels.prepare_module``) packs q and k (padded with zero words
to the kernel's blocks: Nq to ``block_q``, Nk to ``block_k``; k's words straight into the
``[B, H, W, Nk]`` layout the kernels read) and computes the per-(b, h) magnitudes and score
multiplier, then the attention kernel runs: the host allocates those buffers, for ``pv_bits=8``
the s8 V, and the additive tensor (bias + mask as float32, read by the kernel with its strides;
a bias table is gathered straight into ``[H, Nq, Nk]``; a constant 1-element tensor when there
is none). A tensor whose last dim is not unit-stride is the one layout copied (``unit_last``).
Whether the kernel takes a call is remembered per call signature (shapes, dtypes, options), so
a repeated call costs two TVM calls and a few allocations on the host.

What the kernels cover: float32/float16/bfloat16 inputs, any D and Dv, odd N, GQA, bool or
float masks, causal, learned bias, the three scale modes, ``pv_bits`` None or 8. What they do
not (the reference runs, with the reason): float64 (the gradcheck path), the soft binarizers
(training-only), top-N, non-CPU tensors, empty tensors, non-positive static scales.

What this module does not do: math (the reference's helpers are reused for masks and
scales) or building (``cpu_build``).
"""
from __future__ import annotations

import ctypes
import functools
import math
import sys
from typing import Callable, NamedTuple, Optional

import torch

from ...ops import dispatch, reference, validation
from ...ops.options import AttentionOptions, AttentionTensors
from . import build as cpu_build, kernels as cpu_kernels
from .target import use_all_cores

use_all_cores()

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_failed: dict[object, str] = {}
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=None)
def _madvise() -> Optional[Callable]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return fn
    except (OSError, AttributeError):
        return None


def empty_output(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty, with large buffers advised onto transparent huge pages before first touch.

    A fresh 64 MiB score matrix otherwise costs ~16k page faults, which on this VM take longer
    than the kernel itself (34 ms vs 4 ms single-threaded at N=4096).
    """
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    madvise = _madvise() if sys.platform.startswith("linux") else None
    if madvise is not None and nbytes >= 4 * HUGE_PAGE:
        start = -(-out.data_ptr() // HUGE_PAGE) * HUGE_PAGE
        end = (out.data_ptr() + nbytes) // HUGE_PAGE * HUGE_PAGE
        if end > start:
            madvise(start, end - start, MADV_HUGEPAGE)
    return out


def try_build(key: object, build: Callable[[], object]) -> Optional[str]:
    """Build once; a failure becomes a remembered fallback reason."""
    if key in _failed:
        return _failed[key]
    try:
        build()
    except cpu_build.KernelBuildError as err:
        _failed[key] = f"build failed: {err}"
        return _failed[key]
    return None


def _dtype_reason(*tensors: torch.Tensor) -> Optional[str]:
    for t in tensors:
        if t.device.type != "cpu":
            return f"tensor on {t.device.type}"
        if t.dtype == torch.float64:
            return "float64 runs the reference (exact gradcheck path)"
        if t.dtype not in KERNEL_DTYPES:
            return f"dtype {t.dtype} not built"
        if t.numel() == 0:
            return "empty tensor"
    return None


# --------------------------------------------------------------------------- sign_pack
TVM_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def unit_last(x: torch.Tensor) -> torch.Tensor:
    """x with a unit stride on its last dim, which the kernels declare: x itself (a size-1 last
    dim restrided), or, for a last dim of another stride, a contiguous copy (the one layout
    that copies)."""
    if x.stride(-1) == 1:
        return x
    if x.shape[-1] == 1:
        return x.as_strided(x.shape, (*x.stride()[:-1], 1))
    return x.contiguous()


def _as_4d(x: torch.Tensor) -> torch.Tensor:
    """x ``[..., N, D]`` as ``[B, H, N, D]``: leading size-1 dims added (views), more than two
    leading dims flattened (a view where the strides allow)."""
    while x.dim() < 4:
        x = x.unsqueeze(0)
    return x if x.dim() == 4 else x.reshape(-1, *x.shape[-3:])


def pack_into(x: torch.Tensor, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-pack ``x [B, H, N, D]`` (any float dtype and strides, read in place) into ``bits
    [B, H, N, W]`` (any strides, e.g. a transposed view); returns (popcounts, Σ|x|) per row."""
    lead = x.shape[:-1]
    pops = torch.empty(lead, dtype=torch.int32)
    abs_sum = torch.empty(lead, dtype=torch.float32)
    words = reference.num_words(x.shape[-1])
    cpu_build.sign_pack_kernel(words, TVM_DTYPES[x.dtype])(unit_last(x), bits, pops, abs_sum)
    return pops, abs_sum


def pack_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(words, popcounts, sum|x| per row) of ``x [..., D]`` through the TVM kernel."""
    x4 = _as_4d(x)
    bits = torch.empty(*x4.shape[:-1], reference.num_words(x.shape[-1]), dtype=torch.int32)
    pops, abs_sum = pack_into(x4, bits)
    lead = x.shape[:-1]
    return bits.reshape(*lead, bits.shape[-1]), pops.reshape(lead), abs_sum.reshape(lead)


def sign_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bits, pops, _ = pack_rows(x)
    return bits, pops


def sign_pack_supports(x: torch.Tensor) -> Optional[str]:
    return _dtype_reason(x) or _sign_pack_built(x)


def _sign_pack_built(x: torch.Tensor) -> Optional[str]:
    words, dtype = reference.num_words(x.shape[-1]), TVM_DTYPES[x.dtype]
    return try_build(("sign_pack", words, dtype),
                      lambda: cpu_build.sign_pack_kernel(words, dtype))


def prepare_built(q: torch.Tensor, scale_mode: str) -> Optional[str]:
    """None once ``prepare_qk``'s kernel for q's words, dtype and scale mode is built, else
    the build failure (a fallback reason for the forward and the backward)."""
    words, dtype = reference.num_words(q.shape[-1]), TVM_DTYPES[q.dtype]
    return try_build(("prepare", words, dtype, scale_mode),
                      lambda: cpu_build.prepare_kernel(words, dtype, scale_mode))


# --------------------------------------------------------------------------- popcount_scores
def popcount_scores(q_bits: torch.Tensor, k_bits: torch.Tensor, D: int) -> torch.Tensor:
    batch = torch.broadcast_shapes(q_bits.shape[:-2], k_bits.shape[:-2])
    n_q, n_k, words = q_bits.shape[-2], k_bits.shape[-2], q_bits.shape[-1]
    q = q_bits.expand(*batch, n_q, words).reshape(-1, n_q, words).contiguous()
    k = k_bits.expand(*batch, n_k, words).reshape(-1, n_k, words).contiguous()
    out = empty_output((q.shape[0], n_q, n_k), torch.int32)
    cpu_build.scores_kernel(n_q, n_k, words, q.shape[0], D)(q, k, out, D)
    return out.reshape(*batch, n_q, n_k)


def popcount_scores_supports(q_bits: torch.Tensor, k_bits: torch.Tensor, D: int) -> Optional[str]:
    for t in (q_bits, k_bits):
        if t.device.type != "cpu":
            return f"tensor on {t.device.type}"
        if t.dtype != torch.int32:
            return f"packed words must be int32, got {t.dtype}"
    if q_bits.shape[-2] == 0 or k_bits.shape[-2] == 0 or q_bits.numel() == 0:
        return "empty tensor"
    n_q, n_k, words = q_bits.shape[-2], k_bits.shape[-2], q_bits.shape[-1]
    batch = math.prod(torch.broadcast_shapes(q_bits.shape[:-2], k_bits.shape[:-2]))
    return try_build(("scores", n_q, n_k, words, batch, D),
                      lambda: cpu_build.scores_kernel(n_q, n_k, words, batch, D))


# --------------------------------------------------------------------------- binary_attention
def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _dense_bias(bias: Optional[torch.Tensor],
                bias_index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``reference.dense_bias``, a table gathered straight into ``[Ht, Nq, Nk]`` with unit
    stride on keys (the reference's permuted view would need a copy for the kernel)."""
    if bias is None or bias_index is None:
        return bias
    return bias.t()[:, bias_index]


def _additive(bias, attn_mask, n_q: int, n_k: int) -> Optional[torch.Tensor]:
    """bias + mask (reference semantics) as float32, broadcast dims kept at size 1, 4-D."""
    mask = reference.additive_mask(attn_mask, False, n_q, n_k, torch.float32, torch.device("cpu"))
    terms = [t.to(torch.float32) for t in (bias, mask) if t is not None]
    if not terms:
        return None
    add = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    while add.dim() < 4:
        add = add.unsqueeze(0)
    return add.expand(*add.shape[:3], n_k)


def static_scales(q: torch.Tensor, k: torch.Tensor, q_scale: torch.Tensor,
                  k_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh float32 ``[B, Hq]`` copies of static scales (``k_scale`` per kv head expanded to
    the query heads); RuntimeError where they are not per (batch, head)."""
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    if k_scale.dim() >= 3 and k_scale.shape[-3] == hkv and hkv != hq:
        k_scale = reference.expand_kv_heads(k_scale, hq)
    return tuple(torch.broadcast_to(s.to(torch.float32), (b, hq, 1, 1)).reshape(b, hq).clone()
                 for s in (q_scale, k_scale))


class Prepared(NamedTuple):
    """What the kernels read of q and k (``prepare_qk``): words, magnitudes, multiplier."""

    q_bits: torch.Tensor   # [B, Hq, nq_pad, W], rows past Nq zero
    k_bits: torch.Tensor   # [B, Hkv, W, nk_pad] (transposed), keys past Nk zero
    s_q: torch.Tensor      # [B, Hq] float32: the magnitude multiplying sign(q)
    s_k: torch.Tensor      # [B, Hq] float32: sign(k)'s, per query head
    coef: torch.Tensor     # [B, Hq] float32: s_q·s_k·softmax scale, NaN where not finite


def prepare_qk(q: torch.Tensor, k: torch.Tensor, tensors: AttentionTensors,
               options: AttentionOptions, nq_pad: int, nk_pad: int) -> Prepared:
    """q and k packed, their magnitudes and the score multiplier, in one TVM call
    (``kernels.prepare_module``: the reference's ``qk_scale`` and NaN policy)."""
    b, hq, n_q, head_dim = q.shape
    hkv, n_k = k.shape[1], k.shape[2]
    words = reference.num_words(head_dim)
    q_bits = torch.empty(b, hq, nq_pad, words, dtype=torch.int32)
    k_bits = torch.empty(b, hkv, words, nk_pad, dtype=torch.int32)
    rows = torch.empty(b * (hq * n_q + hkv * n_k))
    if options.scale_mode == "static":
        s_q, s_k = static_scales(q, k, tensors.q_scale, tensors.k_scale)
    else:
        s_q, s_k = torch.empty(b, hq), torch.empty(b, hq)
    coef = torch.empty(b, hq)
    fn = cpu_build.prepare_kernel(words, TVM_DTYPES[q.dtype], options.scale_mode)
    fn(unit_last(q), unit_last(k), q_bits, k_bits, rows[:b * hq * n_q].view(b, hq, n_q),
       rows[b * hq * n_q:].view(b, hkv, n_k), s_q, s_k, coef,
       reference.softmax_scale_of(q, options))
    return Prepared(q_bits, k_bits, s_q, s_k, coef)


def _add_shape(bias_shape, attn_mask) -> Optional[tuple[int, ...]]:
    """4-D broadcast shape of the (dense) bias and the mask (None when there is neither)."""
    shapes = [s for s in (bias_shape, None if attn_mask is None else attn_mask.shape)
              if s is not None]
    if not shapes:
        return None
    shape = torch.broadcast_shapes(*shapes)
    return (1,) * (4 - len(shape)) + tuple(shape)


def _workload(q, v, add_shape, is_causal, pv_bits) -> cpu_kernels.AttentionWorkload:
    bcast = None if add_shape is None else tuple(n == 1 for n in add_shape[:3])
    return cpu_kernels.AttentionWorkload(reference.num_words(q.shape[-1]), v.shape[-1],
                                         bool(is_causal), bcast, pv_bits == 8,
                                         TVM_DTYPES[v.dtype])


def _values(v: torch.Tensor, wl: cpu_kernels.AttentionWorkload, nk_pad: int) -> list:
    """The kernel's V arguments: v itself (read in place), or for ``pv_bits=8`` its s8 form
    ``[B, Hkv, nk_pad/4, Dv16, 4]`` and scales (``reference.quantize_v_s8`` in one TVM kernel,
    keys interleaved by 4)."""
    v = unit_last(v)
    if not wl.pv8:
        return [v]
    b, hkv = v.shape[:2]
    v8 = torch.empty(b, hkv, nk_pad // 4, wl.dv16, 4, dtype=torch.int8)
    vscale = torch.empty(b, hkv, wl.dv16, dtype=torch.float32)
    cpu_build.quantize_v_kernel(wl.value_dim, wl.dtype)(v, v8, vscale)
    return [v8, vscale]


# the kernels' additive-tensor argument when there is none (never read: ``wl.add_bcast`` None)
_NO_ADD = torch.zeros(1, 1, 1, 1)


def binary_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     tensors: AttentionTensors, options: AttentionOptions) -> torch.Tensor:
    """The fused TVM kernel with the reference's signature (see module docstring); a bias
    table is gathered to its dense form first."""
    bias = _dense_bias(tensors.bias, tensors.bias_index)
    n_q, head_dim, n_k = q.shape[2], q.shape[3], k.shape[2]
    add = _additive(bias, tensors.attn_mask, n_q, n_k)
    wl = _workload(q, v, None if add is None else add.shape, options.is_causal, options.pv_bits)
    fn, knobs = cpu_build.attention_kernel(wl)
    nq_pad, nk_pad = _round_up(n_q, knobs.block_q), _round_up(n_k, knobs.block_k)
    prep = prepare_qk(q, k, tensors, options, nq_pad, nk_pad)
    out = reference.empty_output(q, v)
    fn(prep.q_bits, prep.k_bits, *_values(v, wl, nk_pad), prep.coef,
       _NO_ADD if add is None else unit_last(add), out, n_k, head_dim)
    user_floats = bias is not None or (tensors.attn_mask is not None
                                       and tensors.attn_mask.is_floating_point())
    return _nan_policy(out, add if user_floats else None)


def _nan_policy(out: torch.Tensor, add: Optional[torch.Tensor]) -> torch.Tensor:
    """NaN over the rows whose bias + mask holds a NaN (``add`` None where only a bool mask
    built it: no NaN possible, no pass over it), as the reference gives them: the kernel's
    running max skips NaN scores, so it could return a finite row (or a dead row's zeros)
    instead. The (b, h) whose score multiplier is not finite (a NaN/Inf in q or k) the kernels
    write as NaN themselves. Computed on the tensors at hand, no host read (the NaN policy,
    ``ops.validation``)."""
    if add is not None:
        out.masked_fill_(torch.isnan(add).any(-1, keepdim=True), float("nan"))
    return out


_POSITIVE = validation.FoundOnce()  # static scales found > 0 (read once per tensor version)


def _positive(scale: torch.Tensor) -> bool:
    """Whether every value of a static scale is > 0: one host read per scale tensor and version
    (calibrated scales stay fixed), not one per call."""
    known = _POSITIVE.get(scale)
    if known is None:
        known = bool((scale > 0).all())
        _POSITIVE.put(scale, known)
    return known


def unbuilt_option(tensors: AttentionTensors, options: AttentionOptions,
                   n_k: int) -> Optional[str]:
    """The option of a call that no CPU kernel implements (the reference runs it), or None."""
    if options.binarizer != "sign":
        return f"binarizer={options.binarizer!r} (soft, training-only)"
    if options.top_n is not None and options.top_n < n_k:
        return "top_n"
    if tensors.sinks is not None or options.soft_cap is not None:
        return "attention sinks / soft_cap"
    return None


def tensor_reason(tensors: AttentionTensors, options: AttentionOptions,
                  *inputs: torch.Tensor) -> Optional[str]:
    """Why the CPU kernels (forward and backward) cannot take these tensors, or None: the
    inputs' device and dtype (``inputs`` ends with q, k, v; q's rank), the bias/mask's device
    and dtype, static scales that are not positive float32."""
    reason = _dtype_reason(*inputs)
    if reason:
        return reason
    for name in ("bias", "attn_mask"):
        t = getattr(tensors, name)
        if t is not None and (t.device.type != "cpu" or t.dtype == torch.float64):
            return f"{name} on {t.device.type} / {t.dtype}"
    if inputs[-3].dim() != 4:
        return f"{inputs[-3].dim()}-D inputs"
    if options.scale_mode == "static":
        for name in ("q_scale", "k_scale"):
            s = getattr(tensors, name)
            if s is None or s.dtype == torch.float64 or not _positive(s):
                return f"{name} must be positive float32 for the kernel"
    return None


#: ``binary_attention_supports``'s answers per call signature (bounded; cleared when full)
_answers: dict[tuple, Optional[str]] = {}
MAX_ANSWERS = 1024


def _signature(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: AttentionTensors,
               options: AttentionOptions) -> tuple:
    """What the answer of ``binary_attention_supports`` depends on, static scales' values
    aside: the options, every tensor's shape, dtype and device, and the kernel cache (where a
    build may have failed)."""
    return (options, id(cpu_build.kernel_cache()),
            *((None if t is None else (t.shape, t.dtype, t.device.type))
              for t in (q, k, v, *tensors)))


def binary_attention_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              tensors: AttentionTensors,
                              options: AttentionOptions) -> Optional[str]:
    """None when the fused kernel runs this call, else the reason the reference runs.
    Remembered per call signature (a repeated call pays a tuple and a dict lookup), except
    with static scales, whose values decide it."""
    if options.scale_mode == "static":
        return _supports(q, k, v, tensors, options)
    key = _signature(q, k, v, tensors, options)
    answer = _answers.get(key, _answers)
    if answer is _answers:
        if len(_answers) >= MAX_ANSWERS:
            _answers.clear()
        answer = _answers[key] = _supports(q, k, v, tensors, options)
    return answer


def _supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: AttentionTensors,
              options: AttentionOptions) -> Optional[str]:
    reason = tensor_reason(tensors, options, q, k, v)
    if reason:
        return reason
    option = unbuilt_option(tensors, options, k.shape[-2])
    if option:
        return f"{option} is not built"
    bias, attn_mask, bias_index = tensors.bias, tensors.attn_mask, tensors.bias_index
    if options.scale_mode == "static":
        try:
            static_scales(q, k, tensors.q_scale, tensors.k_scale)
        except RuntimeError:
            return "static scales are not per (batch, head)"
    bias_shape = None if bias is None else (
        bias.shape if bias_index is None else (bias.shape[1], *bias_index.shape))
    pv_bits = options.pv_bits
    wl = _workload(q, v, _add_shape(bias_shape, attn_mask), options.is_causal, pv_bits)
    if pv_bits == 8:
        limit = cpu_kernels.LUT_MAX_CAUSAL_NQ
        if wl.causal and cpu_kernels.pv8_uses_lut(wl) and q.shape[-2] > limit:
            return f"causal 8-bit kernel serves at most {cpu_kernels.LUT_MAX_CAUSAL_NQ} queries"
        reason = try_build(("quantize_v", wl.value_dim, wl.dtype),
                            lambda: cpu_build.quantize_v_kernel(wl.value_dim, wl.dtype))
        if reason:
            return reason
    return (prepare_built(q, options.scale_mode)
            or try_build(wl, lambda: cpu_build.attention_kernel(wl)))


dispatch.register_kernel("sign_pack", "cpu", dispatch.Kernel(
    "tvm-llvm sign_pack", sign_pack, sign_pack_supports))
dispatch.register_kernel("popcount_scores", "cpu", dispatch.Kernel(
    "tvm-llvm popcount_scores", popcount_scores, popcount_scores_supports))
dispatch.register_kernel("binary_attention", "cpu", dispatch.Kernel(
    "tvm-llvm fused binary_attention", binary_attention, binary_attention_supports))
