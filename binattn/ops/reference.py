"""Pure-torch reference implementations of binattn's ops: the oracle for every kernel and test.

What it does: the exact math of DESIGN.md — sign binarization with a straight-through estimator,
the public bit layout (``sign_pack``), exact ±1 dot products from packed words (XOR and AND
identities), and the full binary-attention forward (scale modes, bias, masks, causal, GQA, top-N,
8-bit P/V). Everything here is differentiable where the math has a gradient, so the autograd of
the custom ops is this code run under ``torch.enable_grad``.

What it does not: argument validation (``binattn.ops.validation``), op registration
(``binattn.ops.library``) or anything fast — it materialises the N×N score matrix.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .options import SCALE_MODES  # noqa: F401 - re-exported
from .options import BINARIZERS, NO_TENSORS, AttentionOptions, AttentionTensors

DEFAULTS = AttentionOptions()

WORD_BITS = 32


def num_words(head_dim: int) -> int:
    """Number of 32-bit words that hold ``head_dim`` sign bits."""
    return (head_dim + WORD_BITS - 1) // WORD_BITS


def sign_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """±1 with sign(0)=+1; gradient passes where |x| <= clip (straight-through estimator).

    Written as ``value + (x − x.detach())·window`` so the forward value is exactly ±1 and the
    function composes with torch.func transforms (no autograd.Function).
    """
    value = torch.where(x >= 0, 1.0, -1.0).to(x.dtype).detach()
    window = (x.detach().abs() <= clip).to(x.dtype)
    return value + (x - x.detach()) * window


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) exactly in the forward, identity gradient."""
    return torch.round(x).detach() + (x - x.detach())


def binarize(x: torch.Tensor, binarizer: str = "sign", temperature: float = 1.0,
             ste_clip: float = 1.0) -> torch.Tensor:
    """Map x to (approximately) ±1.

    ``sign``: exact ±1 with STE; ``tanh``: tanh(x / T) (HAD stage 2, T 1→0.05);
    ``scaled_tanh``: T·tanh(x / T) (HAD stage 1, T 5→1; near-identity for large T).
    """
    if binarizer == "sign":
        return sign_ste(x, ste_clip)
    if binarizer == "tanh":
        return torch.tanh(x / temperature)
    if binarizer == "scaled_tanh":
        return temperature * torch.tanh(x / temperature)
    raise ValueError(f"binarizer must be one of {BINARIZERS}, got {binarizer!r}")


def sign_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack sign bits of ``x`` along the last dim into int32 words; also return row popcounts.

    Bit j (LSB = 0) of word w is 1 iff ``x[..., 32*w + j] >= 0``; padding bits are 0.
    Returns ``(words int32 [..., ceil(D/32)], popcounts int32 [...])``.
    """
    head_dim = x.shape[-1]
    words = num_words(head_dim)
    bits = (x >= 0).to(torch.int64)
    pad = words * WORD_BITS - head_dim
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*x.shape[:-1], words, WORD_BITS)
    weights = torch.bitwise_left_shift(
        torch.ones(WORD_BITS, dtype=torch.int64, device=x.device),
        torch.arange(WORD_BITS, dtype=torch.int64, device=x.device))
    unsigned = (bits * weights).sum(-1)
    signed = torch.where(unsigned >= 2**31, unsigned - 2**32, unsigned).to(torch.int32)
    return signed, bits.sum((-1, -2)).to(torch.int32)


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Population count of each int32 word (treated as uint32), as int32 (SWAR on int64)."""
    v = words.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    # `>>` (aten.__rshift__), not bitwise_right_shift: torch-mlir lowers only the former
    return (((v * 0x01010101) & 0xFFFFFFFF) >> 24).to(torch.int32)


def _pairwise_popcount(q_bits: torch.Tensor, k_bits: torch.Tensor, op,
                       chunk: int = 256) -> torch.Tensor:
    """sum_w popcount(op(q[..., i, w], k[..., j, w])) as int32 [..., Nq, Nk], chunked over Nq."""
    outs = []
    for start in range(0, max(q_bits.shape[-2], 1), chunk):
        q = q_bits[..., start:start + chunk, :].unsqueeze(-2)
        outs.append(popcount32(op(q, k_bits.unsqueeze(-3))).sum(-1, dtype=torch.int32))
    return torch.cat(outs, dim=-2) if outs else q_bits.new_zeros(
        (*q_bits.shape[:-1], k_bits.shape[-2]))


def popcount_scores_xor(q_bits: torch.Tensor, k_bits: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Exact ±1 dot products by the XOR identity: D − 2·popc(a XOR c)."""
    return head_dim - 2 * _pairwise_popcount(q_bits, k_bits, torch.bitwise_xor)


def popcount_scores_and(q_bits: torch.Tensor, k_bits: torch.Tensor, head_dim: int,
                        q_pop: Optional[torch.Tensor] = None,
                        k_pop: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Exact ±1 dot products by the AND identity: 4·popc(a AND c) − 2·popc(a) − 2·popc(c) + D."""
    q_pop = popcount32(q_bits).sum(-1, dtype=torch.int32) if q_pop is None else q_pop
    k_pop = popcount32(k_bits).sum(-1, dtype=torch.int32) if k_pop is None else k_pop
    both = _pairwise_popcount(q_bits, k_bits, torch.bitwise_and)
    return 4 * both - 2 * q_pop.unsqueeze(-1) - 2 * k_pop.unsqueeze(-2) + head_dim


def popcount_scores(q_bits: torch.Tensor, k_bits: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reference ``popcount_scores``: int32 [..., Nq, Nk] (XOR form)."""
    return popcount_scores_xor(q_bits, k_bits, head_dim).to(torch.int32)


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64
                                for t in tensors) else torch.float32


def qk_scale(x: torch.Tensor, scale_mode: str, static: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-(b, h) magnitude multiplying sign(x): mean|x|, a calibrated static value, or 1."""
    if scale_mode == "mean_abs":
        return x.abs().mean(dim=(-2, -1), keepdim=True)
    return magnitude_scale(x.abs().sum(dim=(-2, -1), keepdim=True), scale_mode, static)


def magnitude_scale(abs_sum: torch.Tensor, scale_mode: str,
                    static: Optional[torch.Tensor]) -> torch.Tensor:
    """The static value (``"static"``) or 1 (``"none"``) per (b, h), poisoned by ``abs_sum``
    (Σ|x| over the (b, h)'s elements): NaN where x holds a NaN or ±Inf, so the output of that
    (b, h) is NaN in every scale mode (as ``mean_abs``'s own mean makes it) — never a finite
    value computed from sign(NaN). The NaN policy with no host sync; every path uses this."""
    guard = abs_sum * 0
    return guard + (static.to(abs_sum.dtype) if scale_mode == "static" else 1.0)


def nan_unless_finite(coef: torch.Tensor) -> torch.Tensor:
    """``coef`` (the per-(b, h) score multiplier s_q·s_k·scale) with ±Inf turned into NaN, so
    that every score of that (b, h) is NaN (an Inf would give ±Inf scores, and a row of −Inf
    would pass for a fully masked row, i.e. zeros). Every kernel does the same."""
    return coef + coef * 0


def empty_output(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The custom op's output ``[B, Hq, Nq, Dv]`` in v's dtype, laid out in memory as
    ``[B, Nq, Hq, Dv]`` (FlashAttention's layout, as SDPA's fused kernels return it): the
    ``transpose(1, 2).reshape(B, N, H·Dv)`` that follows attention in a model is then a view."""
    b, hq, n_q, _ = q.shape
    return torch.empty((b, n_q, hq, v.shape[-1]), dtype=v.dtype,
                       device=q.device).transpose(1, 2)


def in_output_layout(out: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out`` itself where it already has :func:`empty_output`'s layout, else copied into it."""
    if out.dtype == v.dtype and out.stride() == _output_strides(out.shape):
        return out
    return empty_output(q, v).copy_(out)


def _output_strides(shape: torch.Size) -> tuple[int, ...]:
    b, hq, n_q, dv = shape
    return (n_q * hq * dv, dv, hq * dv, 1)


def expand_kv_heads(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """Repeat k/v heads for grouped-query attention (head h of q uses kv head h // group)."""
    group = q_heads // x.shape[-3]
    return x if group == 1 else x.repeat_interleave(group, dim=-3)


def expand_kv_scale(k_scale: Optional[torch.Tensor], q_heads: int) -> Optional[torch.Tensor]:
    """A static k scale given per kv head (3-D or more) expanded to the query heads, like k."""
    if k_scale is not None and k_scale.dim() >= 3:
        return expand_kv_heads(k_scale, q_heads)
    return k_scale


def additive_mask(attn_mask: Optional[torch.Tensor], is_causal: bool, n_q: int, n_k: int,
                  dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    """Combine a bool (True = keep) or float additive mask and causality into one additive mask.

    Causal follows SDPA: query i sees keys j <= i (top-left aligned).
    """
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(
                ~attn_mask, float("-inf"))
        else:
            mask = attn_mask.to(dtype)
    if is_causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        causal = torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
        mask = causal if mask is None else mask + causal
    return mask


def top_n_mask(scores: torch.Tensor, top_n: int) -> torch.Tensor:
    """Bool mask keeping the ``top_n`` largest scores per row (ties: lower key index wins).

    Threshold form (no sort, so torch-mlir and ONNX can export it): keep every score above
    the row's ``top_n``-th largest value t, then the first ``top_n − #(s > t)`` scores equal to t.
    """
    s = scores.detach()
    threshold = torch.topk(s, top_n, dim=-1).values[..., -1:]
    above = s > threshold
    ties = s == threshold
    room = top_n - above.sum(-1, keepdim=True)
    return above | (ties & (torch.cumsum(ties.to(torch.int32), dim=-1) <= room))


def quantize_probs_u8(p: torch.Tensor) -> torch.Tensor:
    """P → round(P·255)/255 (u8 levels) with a straight-through gradient."""
    return round_ste(p * 255).clamp(0, 255) / 255


def v_inverse_step(v: torch.Tensor) -> torch.Tensor:
    """127 / max|v| over tokens, per (b, h, d), detached: the int8 scale of V."""
    return 127.0 / v.detach().abs().amax(dim=-2, keepdim=True).clamp_min(1e-12)


def quantize_v_s8(v: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 fake-quant of V, one scale per (b, h, d): max|v| over tokens / 127."""
    inv_step = v_inverse_step(v)
    # |v·inv_step| <= 127 by construction, so no clamp (a clamp would block the STE gradient of
    # the channel maximum whenever float rounding lands it a hair above 127)
    return round_ste(v * inv_step) / (inv_step + 1e-6)


class ScoreFactors(NamedTuple):
    """The differentiable factors of the scores ``s_q·s_k·softmax_scale·(b_q·b_kᵀ)``: the
    per-(b, h) magnitudes ``s_q``, ``s_k`` ``[B, Hq, 1, 1]`` and the binarized operands ``b_q``
    ``[B, Hq, Nq, D]``, ``b_k`` ``[B, Hq, Nk, D]`` (k expanded to the query heads), all in the
    compute dtype."""

    softmax_scale: float
    s_q: torch.Tensor
    s_k: torch.Tensor
    b_q: torch.Tensor
    b_k: torch.Tensor


def score_factors(q: torch.Tensor, k: torch.Tensor, options: AttentionOptions = DEFAULTS,
                  q_scale: Optional[torch.Tensor] = None,
                  k_scale: Optional[torch.Tensor] = None) -> ScoreFactors:
    """:class:`ScoreFactors` of q and k (STE and mean|x| gradients included): shared by
    :func:`binary_scores` and the SDPA path (``binattn.ops.sdpa``)."""
    dtype = compute_dtype(q, k)
    q, k = q.to(dtype), expand_kv_heads(k.to(dtype), q.shape[-3])
    k_scale = expand_kv_scale(k_scale, q.shape[-3])
    s_q = qk_scale(q, options.scale_mode, q_scale)
    s_k = qk_scale(k, options.scale_mode, k_scale)
    q_in = binarizer_input(q, s_q, options.scale_mode)
    k_in = binarizer_input(k, s_k, options.scale_mode)
    return ScoreFactors(softmax_scale_of(q, options), s_q, s_k, binarize_as(q_in, options),
                        binarize_as(k_in, options))


def binarizer_input(x: torch.Tensor, s: torch.Tensor, scale_mode: str) -> torch.Tensor:
    """What the binarizer sees: ``x / s`` for static scales (HAD: Q_b = σ·sign(Q/σ); sign is
    scale-free, so only the soft forms and the STE window see σ), else x itself."""
    return x / s if scale_mode == "static" else x


def binary_scores(q: torch.Tensor, k: torch.Tensor, options: AttentionOptions = DEFAULTS,
                  q_scale: Optional[torch.Tensor] = None,
                  k_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """s_q·s_k·softmax_scale·(b_q·b_kᵀ) in the compute dtype, [B, Hq, Nq, Nk] (no bias/mask)."""
    f = score_factors(q, k, options, q_scale, k_scale)
    return nan_unless_finite(f.s_q * f.s_k * f.softmax_scale) * (f.b_q @ f.b_k.transpose(-1, -2))


def softmax_scale_of(q: torch.Tensor, options: AttentionOptions) -> float:
    """The softmax scale: ``options.scale``, default ``1/sqrt(D)``."""
    return 1.0 / math.sqrt(q.shape[-1]) if options.scale is None else options.scale


def binarize_as(x: torch.Tensor, options: AttentionOptions) -> torch.Tensor:
    """:func:`binarize` with the binarizer, temperature and STE clip of ``options``."""
    return binarize(x, options.binarizer, options.temperature, options.ste_clip)


def table_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The dense bias ``[Ht, Nq, Nk]`` that a bias table ``[T, Ht]`` and an index ``[Nq, Nk]``
    (ints in [0, T)) stand for: ``bias[h, i, j] = table[index[i, j], h]`` (Ht is 1 or Hq)."""
    n_q, n_k = index.shape
    return table[index.reshape(-1)].reshape(n_q, n_k, table.shape[-1]).permute(2, 0, 1)


def dense_bias(bias: Optional[torch.Tensor],
               bias_index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``bias`` as the additive tensor it stands for: itself, or the table lookup with an index."""
    return bias if bias is None or bias_index is None else table_bias(bias, bias_index)


def table_grad(dense_grad: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Gradient of ``table`` from the gradient of :func:`table_bias`'s output (``[Ht, Nq, Nk]``):
    every (i, j) adds its value onto the table row ``index[i, j]``."""
    rows = dense_grad.permute(1, 2, 0).reshape(-1, table.shape[-1])
    grad = torch.zeros(table.shape, dtype=rows.dtype, device=rows.device)
    return grad.index_add_(0, index.reshape(-1), rows).to(table.dtype)


def soft_capped(scores: torch.Tensor, soft_cap: Optional[float]) -> torch.Tensor:
    """``cap·tanh(scores / cap)`` (Gemma-2's logit soft-cap), or ``scores`` without a cap."""
    return scores if soft_cap is None else soft_cap * torch.tanh(scores / soft_cap)


def sink_column(sinks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The sink logits ``[Hq]`` as one more score column ``[..., Hq, Nq, 1]`` of ``scores``."""
    return sinks.to(scores.dtype).reshape(-1, 1, 1).expand(*scores.shape[:-1], 1)


def attention_probs(scores: torch.Tensor, bias: Optional[torch.Tensor],
                    attn_mask: Optional[torch.Tensor], is_causal: bool,
                    top_n: Optional[int], soft_cap: Optional[float] = None,
                    sinks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(cap(scores) + bias + mask) with top-N; rows with every key masked become zeros.

    ``soft_cap``: ``cap·tanh(s / cap)`` on the scores before bias and mask. ``sinks`` (one logit
    per query head, GPT-OSS): an extra column in the softmax's denominator with no value, i.e.
    ``p_ij = exp(s_ij) / (Σ_j' exp(s_ij') + exp(sink_h))``; the mask does not reach it.
    """
    dtype = scores.dtype
    scores = soft_capped(scores, soft_cap)
    if bias is not None:
        scores = scores + bias.to(dtype)
    mask = additive_mask(attn_mask, is_causal, scores.shape[-2], scores.shape[-1], dtype,
                         scores.device)
    if mask is not None:
        scores = scores + mask
    if top_n is not None and top_n < scores.shape[-1]:
        scores = scores.masked_fill(~top_n_mask(scores, top_n), float("-inf"))
    dead_rows = torch.isneginf(scores).all(-1, keepdim=True)
    scores = scores.masked_fill(dead_rows, 0.0)
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        with_sink = torch.cat([scores, sink_column(sinks, scores)], dim=-1)
        probs = torch.softmax(with_sink, dim=-1)[..., :-1]
    return probs.masked_fill(dead_rows, 0.0)


def binary_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     tensors: AttentionTensors = NO_TENSORS,
                     options: AttentionOptions = DEFAULTS, return_probs: bool = False):
    """Reference binary attention on validated 4-D inputs [B, H, N, D]; output in v's dtype.

    Scores are soft-capped (``options.soft_cap``) before bias and mask; ``tensors.sinks`` adds
    one value-less logit per query head to each softmax (:func:`attention_probs`).

    Rows whose keys are all masked produce zeros (not NaN). With ``tensors.bias_index``,
    ``tensors.bias`` is a table looked up by it (:func:`table_bias`). With ``return_probs``
    also returns the attention probabilities (used by attention-map distillation). Keyword
    arguments as ``binattn.ops.binary_attention`` takes them: ``*options.split_keywords(...)``.
    """
    bias = dense_bias(tensors.bias, tensors.bias_index)
    scores = binary_scores(q, k, options, tensors.q_scale, tensors.k_scale)
    probs = attention_probs(scores, bias, tensors.attn_mask, options.is_causal, options.top_n,
                            options.soft_cap, tensors.sinks)
    dtype = probs.dtype
    values = expand_kv_heads(v.to(dtype), q.shape[-3])
    if options.pv_bits == 8:
        probs_used, values = quantize_probs_u8(probs), quantize_v_s8(values)
    else:
        probs_used = probs
    out = (probs_used @ values).to(v.dtype)
    return (out, probs) if return_probs else out


def binarize_derivative(x: torch.Tensor, binarizer: str, temperature: float,
                        ste_clip: float) -> torch.Tensor:
    """d binarize(x) / dx elementwise (the STE window for sign)."""
    if binarizer == "sign":
        return (x.abs() <= ste_clip).to(x.dtype)
    t = torch.tanh(x / temperature)
    return (1 - t * t) / (temperature if binarizer == "tanh" else 1.0)


def _sum_to_shape(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape``."""
    while x.dim() > len(shape):
        x = x.sum(0)
    dims = [i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1]
    return x.sum(dims, keepdim=True) if dims else x


def binarize_value(x: torch.Tensor, options: AttentionOptions,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forward value of :func:`binarize_as` with no gradient (±1 for ``sign``, in one
    pass, into ``out`` if given; the soft binarizers' values as they are)."""
    if options.binarizer == "sign":
        # sign(sign(x) + ½): +1 for x ≥ 0 (±0 included), −1 below; +1 for NaN (torch.sign(NaN)
        # is 0; sign_ste's value is −1 there: either way a NaN makes its (b, h)'s scale NaN);
        # two arithmetic passes, several times faster on CPU than a where over a bool mask
        return torch.sign(x, out=out).add_(0.5).sign_()
    value = binarize_as(x, options).detach()
    return value if out is None else out.copy_(value)


def _input_grad(x, s, b_in, d_hat, options: AttentionOptions, work: torch.Tensor):
    """Gradient to q (or k) from d(x̂) where x̂ = s·binarize(x_in), written over ``d_hat``
    (which it returns), with ``work`` (x's shape) as scratch. Not differentiable itself
    (in place: each fresh N·D tensor costs page faults on CPU)."""
    if options.scale_mode == "mean_abs":   # ds = Σ binarize(x_in)·d(x̂), before d_hat changes
        ds = binarize_value(b_in, options, out=work).mul_(d_hat).sum(dim=(-2, -1), keepdim=True)
    if options.binarizer == "sign":
        d_hat.mul_(torch.abs(b_in, out=work).le_(options.ste_clip))
    else:
        d_hat.mul_(binarize_derivative(b_in, options.binarizer, options.temperature,
                                       options.ste_clip))
    grad = d_hat if options.scale_mode == "static" else d_hat.mul_(s)
    if options.scale_mode == "mean_abs":
        grad = grad.addcmul_(torch.sign(x, out=work), ds / (x.shape[-2] * x.shape[-1]))
    return grad


def _scratch(*shaped: torch.Tensor) -> list[torch.Tensor]:
    """One uninitialised buffer per tensor of ``shaped`` (its shape, dtype and device), all
    views of one allocation as large as the largest (used one after another)."""
    flat = shaped[0].new_empty(max(t.numel() for t in shaped))
    return [flat[:t.numel()].view(t.shape) for t in shaped]


class BackwardInputs(NamedTuple):
    """The O(N·D) quantities the reference VJP starts from, in the compute dtype, k/v already
    expanded to the query heads (GQA): the scales ``s_q``, ``s_k`` (x̂ = s·binarize(x_in) are
    the operands whose products give the scores, :func:`binarized_operands`) and the
    binarizers' inputs ``q_in``, ``k_in``. (The CPU kernel path takes its scales from the
    forward's ``prepare`` kernel, which computes them as :func:`qk_scale` does, and needs none
    of the rest.)"""

    dtype: torch.dtype
    softmax_scale: float
    qf: torch.Tensor
    kf: torch.Tensor
    vf: torch.Tensor
    s_q: torch.Tensor
    s_k: torch.Tensor
    q_in: torch.Tensor
    k_in: torch.Tensor
    k_scale: Optional[torch.Tensor]


def backward_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    tensors: AttentionTensors, options: AttentionOptions,
                    bias: Optional[torch.Tensor] = None) -> BackwardInputs:
    """:class:`BackwardInputs` of a backward call (the reference VJP's)."""
    o, k_scale = options, tensors.k_scale
    dtype = compute_dtype(q, k, v, bias)
    hq = q.shape[-3]
    qf, kf, vf = q.to(dtype), expand_kv_heads(k.to(dtype), hq), expand_kv_heads(v.to(dtype), hq)
    k_scale = expand_kv_scale(k_scale, hq)
    s_q, s_k = qk_scale(qf, o.scale_mode, tensors.q_scale), qk_scale(kf, o.scale_mode, k_scale)
    q_in = binarizer_input(qf, s_q, o.scale_mode)
    k_in = binarizer_input(kf, s_k, o.scale_mode)
    return BackwardInputs(dtype, softmax_scale_of(q, o), qf, kf, vf, s_q, s_k, q_in, k_in,
                          k_scale)


def binarized_operands(inputs: BackwardInputs,
                       options: AttentionOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q̂, k̂) = (s_q·binarize(q_in), s_k·binarize(k_in))``, the scores' operands."""
    return (inputs.s_q * binarize_value(inputs.q_in, options),
            inputs.s_k * binarize_value(inputs.k_in, options))


def backward_outputs(inputs: BackwardInputs, dq_hat: torch.Tensor, dk_hat: torch.Tensor,
                     dv: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     options: AttentionOptions) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    """``(dq, dk, dv)`` in the inputs' dtypes from the gradients of the scores' operands,
    ``dq_hat = scale·dS·k̂`` ``[B, Hq, Nq, D]`` and ``dk_hat = scale·dSᵀ·q̂`` ``[B, Hq, Nk, D]``,
    and ``dv [B, Hq, Nk, Dv]`` (per query head): the STE window and the mean|x| scales'
    gradient (:func:`_input_grad`: the math the CPU backward's STE kernel implements, and its
    fallback), GQA sums over a group's query heads (:func:`per_input_grads`, shared with it).
    ``dq_hat`` and ``dk_hat`` are overwritten (the callers' temporaries)."""
    i = inputs
    work_q, work_k = _scratch(i.q_in, i.k_in)
    dq = _input_grad(i.qf, i.s_q, i.q_in, dq_hat, options, work_q)
    dk = _input_grad(i.kf, i.s_k, i.k_in, dk_hat, options, work_k)
    return per_input_grads(dq, dk, dv, q, k, v)


def per_input_grads(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, q: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """``(dq, dk, dv)`` given per query head (GQA's k/v heads expanded) in the compute dtype, as
    the inputs have them: dk and dv summed over each kv head's group of query heads, each cast
    to its input's dtype (a no-op where nothing changes: the tensors themselves come back)."""
    group = q.shape[-3] // k.shape[-3]
    if group > 1:
        hkv = k.shape[-3]
        dk = dk.unflatten(-3, (hkv, group)).sum(-3)
        dv = dv.unflatten(-3, (hkv, group)).sum(-3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def output_row_dot(grad_out: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``δ = rowsum(grad_out ∘ out)`` ``[..., Nq]`` in float32 (float64 for float64 inputs): the
    ``Σ_j p_j·dp_j`` of the VJP wherever ``out = P·V`` (every option but ``pv_bits=8``), which
    the autograd formula hands to the backward op so a kernel need not form dP = dO·Vᵀ for it."""
    dtype = compute_dtype(grad_out, out)
    return torch.linalg.vecdot(grad_out.to(dtype), out.to(dtype))


def binary_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, tensors: AttentionTensors = NO_TENSORS,
                              options: AttentionOptions = DEFAULTS) -> tuple:
    """Analytic VJP of :func:`binary_attention` (STE through sign):
    ``(dq, dk, dv, dbias, dsinks)``.

    The same math a backward kernel implements; tested against autograd of the forward.
    ``dbias`` is None when there is no bias; with ``bias_index`` it is the table's gradient.
    ``dsinks`` (None without sinks): the sink is a softmax column whose value is 0, so its
    logit's gradient is ``p_sink·(0 − Σ_j p_j·dp_j)`` summed over batch and rows, with
    ``p_sink = 1 − Σ_j p_j`` (1 in a fully masked row, where Σ_j p_j·dp_j is 0). A soft cap
    multiplies the scores' gradient by its derivative ``1 − tanh²(s / cap)``. The O(N·D) parts
    (:func:`backward_inputs`, :func:`backward_outputs`) are the contract of the CPU kernel path,
    which shares :func:`_input_grad` (as its fallback) and :func:`per_input_grads`.
    """
    o, bias_index = options, tensors.bias_index
    table, bias = tensors.bias, dense_bias(tensors.bias, bias_index)
    inputs = backward_inputs(q, k, v, tensors, o, bias)
    with torch.no_grad():
        scores = binary_scores(q, k, o, tensors.q_scale, inputs.k_scale)
    sinks = tensors.sinks
    probs = attention_probs(scores, bias, tensors.attn_mask, o.is_causal, o.top_n, o.soft_cap,
                            sinks)
    g, vf = grad_out.to(inputs.dtype), inputs.vf
    if o.pv_bits == 8:
        inv_step = v_inverse_step(vf)
        v_used, p_used = quantize_v_s8(vf), quantize_probs_u8(probs)
        dv = (p_used.transpose(-1, -2) @ g) * (inv_step / (inv_step + 1e-6))
    else:
        v_used, p_used = vf, probs
        dv = probs.transpose(-1, -2) @ g
    dp = g @ v_used.transpose(-1, -2)
    row_dot = (dp * probs).sum(-1, keepdim=True)
    ds = probs * (dp - row_dot)
    dsinks = None
    if sinks is not None:
        p_sink = 1 - probs.sum(-1, keepdim=True)
        dsinks = (-(p_sink * row_dot)).sum((0, 2)).reshape(sinks.shape).to(sinks.dtype)
    dbias = _sum_to_shape(ds, bias.shape).to(bias.dtype) if bias is not None else None
    if dbias is not None and bias_index is not None:
        dbias = table_grad(dbias, bias_index, table)
    if o.soft_cap is not None:
        ds = ds * (1 - torch.tanh(scores / o.soft_cap) ** 2)
    q_hat, k_hat = binarized_operands(inputs, o)
    scale = inputs.softmax_scale
    dq, dk, dv = backward_outputs(inputs, scale * (ds @ k_hat), scale * (ds.mT @ q_hat), dv, q, k,
                                  v, o)
    return dq, dk, dv, dbias, dsinks
