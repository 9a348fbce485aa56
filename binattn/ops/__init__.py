"""binattn's public ops: validated Python wrappers over the ``torch.ops.binattn`` custom ops.

``sign_pack``, ``popcount_scores`` and ``binary_attention`` (``binary_attention_with``: its
options as one ``AttentionOptions``) check their arguments (clear ValueError/TypeError naming
the argument), then call the registered custom op, which runs a TVM
kernel where one is built for the device and the reference otherwise. Semantics: DESIGN.md.
On CUDA, a ``binary_attention`` call that records a gradient (training) runs ``ops.sdpa``
instead: torch's fused SDPA on ±1 operands, forward and backward, with no N×N tensor.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch, library, reference, sdpa, validation
from .bias import RelPosBias, relpos_index, relpos_table_size
from .dispatch import kernel_report, reference_only, used_fallback
from .options import AttentionOptions, AttentionTensors, op_args, split_keywords
from .validation import data_checks

__all__ = ["sign_pack", "popcount_scores", "binary_attention", "binary_attention_with",
           "AttentionOptions", "AttentionTensors", "split_keywords", "RelPosBias", "relpos_index",
           "relpos_table_size", "kernel_report", "reference_only", "used_fallback", "reference",
           "data_checks"]


def sign_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the signs of ``x`` along its last dim D into int32 words.

    Bit j (LSB = 0) of word w is 1 iff ``x[..., 32*w + j] >= 0`` (sign(0) = +1); padding bits
    of the last word are 0. Returns ``(words, popcounts)``: int32 ``[..., ceil(D/32)]`` and the
    int32 number of set bits per row ``[...]`` (the AND identity needs them). D is not stored:
    carry it alongside.

    >>> words, pops = sign_pack(torch.tensor([[1.0, -2.0, 0.0]]))
    >>> words.tolist(), pops.tolist()
    ([[5]], [2])
    """
    validation.check_sign_pack_input(x)
    return torch.ops.binattn.sign_pack(x)


def popcount_scores(q_bits: torch.Tensor, k_bits: torch.Tensor, D: int) -> torch.Tensor:
    """Exact ±1 dot products ``sign(q) @ sign(k)ᵀ`` from packed words, int32 ``[..., Nq, Nk]``.

    ``q_bits [..., Nq, W]`` and ``k_bits [..., Nk, W]`` come from :func:`sign_pack` with the same
    D; their batch dims broadcast. Every result lies in [−D, D] with D's parity.
    """
    validation.check_popcount_inputs(q_bits, k_bits, D)
    return torch.ops.binattn.popcount_scores(q_bits, k_bits, D)


def _as_4d(x: Optional[torch.Tensor], squeeze: bool) -> Optional[torch.Tensor]:
    return x.unsqueeze(1) if (squeeze and x is not None and x.dim() == 3) else x


def binary_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     bias: Optional[torch.Tensor] = None,
                     attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                     scale: Optional[float] = None, scale_mode: str = "mean_abs",
                     q_scale: Optional[torch.Tensor] = None,
                     k_scale: Optional[torch.Tensor] = None, top_n: Optional[int] = None,
                     pv_bits: Optional[int] = None, binarizer: str = "sign",
                     temperature: float = 1.0, ste_clip: float = 1.0,
                     bias_index: Optional[torch.Tensor] = None,
                     sinks: Optional[torch.Tensor] = None, soft_cap: Optional[float] = None,
                     check_finite: Optional[bool] = None) -> torch.Tensor:
    """Attention with 1-bit queries and keys (BinaryAttention / HAD), a drop-in for SDPA.

    ``q [B, Hq, Nq, D]``, ``k [B, Hkv, Nk, D]``, ``v [B, Hkv, Nk, Dv]`` (3-D ``[B, N, D]`` is
    taken as one head); ``Hq`` a multiple of ``Hkv`` (GQA); q, k, v of one dtype. Scores are
    ``cap(s_q·s_k·scale·(sign(q)·sign(k)ᵀ)) + bias + mask``, then softmax and ``@ v``.

    Args:
        bias: additive learned bias broadcastable to ``[B, Hq, Nq, Nk]`` (e.g. from
            :class:`RelPosBias`); it receives a real gradient. With ``bias_index`` it is a
            table ``[T, H]`` (H = 1 or Hq) instead, and the bias of (h, i, j) is
            ``bias[bias_index[i, j], h]`` — the relative-position form, which the CUDA kernel
            looks up in-kernel without an N×N tensor (its gradient goes to the table).
        bias_index: int ``[Nq, Nk]`` rows of the table (see ``bias``); e.g.
            ``RelPosBias.index``.
        attn_mask: bool (True = keep) or additive float mask, as in SDPA.
        is_causal: query i attends to keys j <= i.
        scale: softmax scale (a finite float > 0), default ``1/sqrt(D)``.
        scale_mode: ``"mean_abs"`` (per-(b, h) mean|x|, BinaryAttention), ``"static"`` (use
            ``q_scale``/``k_scale``, HAD), or ``"none"``.
        top_n: keep the N largest scores per query row (HAD), ties to the lower key index.
        pv_bits: 8 to fake-quantize P (u8) and V (symmetric s8 per channel).
        binarizer: ``"sign"`` (STE, clipped at ``ste_clip``), or HAD's soft stages
            ``"scaled_tanh"`` (T·tanh(x/T)) and ``"tanh"`` (tanh(x/T)) with T = ``temperature``.
        sinks: float ``[Hq]``, one learned logit per query head (GPT-OSS's attention sinks):
            an extra softmax column with no value, so ``p_ij = exp(s_ij) / (Σ_j exp(s_ij) +
            exp(sinks[h]))`` and a row's weights sum to less than 1; masks do not reach it. It
            receives a real gradient.
        soft_cap: logit soft-cap c > 0 (Gemma-2): the scores become ``c·tanh(s / c)`` before
            bias and mask.
        check_finite: True reads q, k, v, bias, sinks and a float mask back and raises
            ValueError naming the first that holds NaN/Inf (eager only); None (the default)
            checks CPU tensors (reading them costs no stall there) and, on CUDA, only inside
            :func:`data_checks` or with ``BINATTN_DATA_CHECKS=1`` (no host sync). Unchecked, a
            NaN/Inf input gives a NaN output (never a finite wrong one). A ``bias_index`` is
            range-checked once per tensor version unless this is False. A binarized model's
            sites (:func:`binary_attention_with`) follow the global switch only, on any device.

    Rows whose keys are all masked give zeros. Output has v's dtype; math runs in float32
    (float64 for float64 inputs).
    """
    if check_finite is None and isinstance(q, torch.Tensor) and q.device.type == "cpu":
        check_finite = True   # a direct call on CPU: no launch queue to drain
    return binary_attention_with(
        q, k, v, AttentionTensors(bias=bias, attn_mask=attn_mask, q_scale=q_scale,
                                  k_scale=k_scale, bias_index=bias_index, sinks=sinks),
        AttentionOptions(is_causal=is_causal, scale=scale, scale_mode=scale_mode, top_n=top_n,
                         pv_bits=pv_bits, binarizer=binarizer, temperature=temperature,
                         ste_clip=ste_clip, soft_cap=soft_cap), check_finite=check_finite)


def binary_attention_with(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          tensors: AttentionTensors = AttentionTensors(),
                          options: AttentionOptions = AttentionOptions(), *,
                          check_finite: Optional[bool] = None) -> torch.Tensor:
    """:func:`binary_attention` with its optional tensors as one :class:`AttentionTensors` and
    its options as one :class:`AttentionOptions` (what a site holds), in the order the
    reference and the kernels take them. ``check_finite=None`` follows :func:`data_checks`
    alone, on every device: a model's forward and training step read nothing back."""
    squeeze = q.dim() == 3 if isinstance(q, torch.Tensor) else False
    q, k, v = _as_4d(q, squeeze), _as_4d(k, squeeze), _as_4d(v, squeeze)
    tensors = tensors._replace(attn_mask=_as_4d(tensors.attn_mask, squeeze),
                               bias=_as_4d(tensors.bias, squeeze))
    bias, attn_mask = tensors.bias, tensors.attn_mask
    validation.check_attention_inputs(q, k, v)
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if tensors.bias_index is None:
        validation.check_broadcast("bias", bias, target)
    else:
        validation.check_bias_table(bias, tensors.bias_index, target,
                                    check_values=check_finite is not False)
    validation.check_broadcast("attn_mask", attn_mask, target)
    options.check_tensors(tensors)
    validation.check_sinks(tensors.sinks, q)
    if validation.resolve_check_finite(check_finite):
        for name, x in (("q", q), ("k", k), ("v", v), ("bias", bias), ("sinks", tensors.sinks)):
            validation.check_finite(name, x)
        if attn_mask is not None and attn_mask.is_floating_point():
            validation.check_finite("attn_mask", attn_mask, allow_inf=True)  # −inf masks
    if sdpa.takes(q, k, v, tensors, options):   # training on CUDA: fused SDPA on ±1 operands
        dispatch.record("binary_attention", q.device.type, sdpa.NAME)
        out = sdpa.binary_attention(q, k, v, tensors, options)
    elif library.direct_call_ok(q, k, v, *tensors):
        if torch.autograd.profiler._is_profiler_enabled:
            with torch.profiler.record_function("binattn::binary_attention"):
                out = library.binary_attention_impl(q, k, v, tensors, options)
        else:
            out = library.binary_attention_impl(q, k, v, tensors, options)
    else:
        out = torch.ops.binattn.binary_attention(q, k, v, *op_args(tensors, options))
    return out.squeeze(1) if squeeze else out
