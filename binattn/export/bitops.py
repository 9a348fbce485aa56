"""``torch.ops.binattn.binary_attention`` written with integer bit operations only, for export.

Exporters cannot see through a custom op (torch-mlir emits an opaque ``torch.operator``, ONNX
has no function for it), so before export the op is decomposed into standard ATen ops:
sign bits packed into 32-bit words (``reference.sign_pack``), XOR, a SWAR popcount
(``reference.popcount32``: shifts, ands, adds, one multiply — ONNX has no popcount op and
torch-mlir has no ATen popcount), ``D − 2·popc(a XOR c)`` as the exact ±1 dot product, then the
scales, soft-cap, bias, mask, top-N, sinks and softmax of ``reference.attention_probs`` and the
float P·V. The QKᵀ product is therefore **no float matmul**: only P·V is. The ``portable``
variant (int32 packing and a bit-test popcount, no shifts, no int64) is for tosa/stablehlo,
which reject those.

What it does not: soft binarizers (HAD's tanh stages are float math, not bits — export the
trained ``sign`` model) or the backward.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from ..errors import UserError
from ..ops import reference
from ..ops.options import from_op_args


# int32 value of bit j (bit 31 is the sign bit); Python ints, so the graph holds scalars only
_BIT_VALUES = [1 << j for j in range(31)] + [-(1 << 31)]


def sign_pack_int32(x: torch.Tensor) -> torch.Tensor:
    """The public bit layout (``reference.sign_pack`` words) built with int32 arithmetic only:
    bits × 2^j summed per word (bits are disjoint, so the int32 sum is the exact word)."""
    head_dim = x.shape[-1]
    words = reference.num_words(head_dim)
    bits = (x >= 0).to(torch.int32)
    pad = words * reference.WORD_BITS - head_dim
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*x.shape[:-1], words, reference.WORD_BITS)
    return sum(bits[..., j] * value for j, value in enumerate(_BIT_VALUES))


def popcount_bittest(words: torch.Tensor) -> torch.Tensor:
    """Popcount of int32 words by testing each bit (AND with 2^j, compare, sum): no shifts, no
    int64 — what tosa and stablehlo can lower. 32 element-wise steps instead of SWAR's 12."""
    return sum(((words & value) != 0).to(torch.int32) for value in _BIT_VALUES)


def bit_scores(q: torch.Tensor, k: torch.Tensor, head_dim: int,
               portable: bool = False) -> torch.Tensor:
    """Exact ``sign(q)·sign(k)ᵀ`` as int32 from packed sign bits: ``D − 2·popc(a XOR c)``.

    Default: ``reference.sign_pack`` + the SWAR popcount (int64 shifts; linalg, torch dialect,
    ONNX). ``portable``: int32 packing + bit-test popcount (tosa, stablehlo).
    """
    if not portable:
        q_bits, _ = reference.sign_pack(q)
        k_bits, _ = reference.sign_pack(k)
        return reference.popcount_scores_xor(q_bits, k_bits, head_dim)
    xor = torch.bitwise_xor(sign_pack_int32(q).unsqueeze(-2), sign_pack_int32(k).unsqueeze(-3))
    return head_dim - 2 * popcount_bittest(xor).sum(-1, dtype=torch.int32)


def binary_attention_bitops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any,
                            portable: bool = False, **kwargs: Any) -> torch.Tensor:
    """Forward of the binary-attention op (the op's arguments, positional and/or by name), QKᵀ
    through bit operations (``portable``: the shift-free int32 form of :func:`bit_scores`); a
    bias table is gathered by its index (an ordinary gather in the exported graph)."""
    tensors, options = from_op_args(args, kwargs)
    if options.binarizer != "sign":
        raise UserError(f"export needs binarizer='sign' (the trained model), got "
                        f"{options.binarizer!r}: soft HAD stages are float math, not bit "
                        "operations")
    bias = reference.dense_bias(tensors.bias, tensors.bias_index)
    k_scale = tensors.k_scale
    dtype = reference.compute_dtype(q, k, v, bias)
    qf, kf = q.to(dtype), reference.expand_kv_heads(k.to(dtype), q.shape[-3])
    if k_scale is not None and k_scale.dim() >= 3:
        k_scale = reference.expand_kv_heads(k_scale, q.shape[-3])
    softmax_scale = reference.softmax_scale_of(q, options)
    s_q = reference.qk_scale(qf, options.scale_mode, tensors.q_scale)
    s_k = reference.qk_scale(kf, options.scale_mode, k_scale)
    # sign(x/σ) = sign(x) for σ > 0, so static scales only multiply the integer scores
    dots = bit_scores(qf, kf, q.shape[-1], portable).to(dtype)
    scores = (s_q * s_k * softmax_scale) * dots
    probs = reference.attention_probs(scores, bias, tensors.attn_mask, options.is_causal,
                                      options.top_n, options.soft_cap, tensors.sinks)
    values = reference.expand_kv_heads(v.to(dtype), q.shape[-3])
    if options.pv_bits == 8:
        probs, values = reference.quantize_probs_u8(probs), reference.quantize_v_s8(values)
    return (probs @ values).to(v.dtype)


def decomposition_table(base: Optional[dict] = None, portable: bool = False) -> dict:
    """``base`` (or an empty table) plus binattn's op → its bit-op decomposition."""
    table: dict = dict(base or {})
    table[torch.ops.binattn.binary_attention.default] = (
        functools.partial(binary_attention_bitops, portable=True) if portable
        else binary_attention_bitops)
    table[torch.ops.binattn.popcount_scores.default] = reference.popcount_scores
    table[torch.ops.binattn.sign_pack.default] = reference.sign_pack
    return table


def decompose(program: torch.export.ExportedProgram, base: Optional[dict] = None,
              portable: bool = False) -> torch.export.ExportedProgram:
    """The program with every binattn op replaced by standard ATen bit/float ops."""
    return program.run_decompositions(decomposition_table(base, portable))


def count_binattn_nodes(program: torch.export.ExportedProgram) -> int:
    """How many ``torch.ops.binattn.*`` calls a program still holds."""
    return sum(1 for n in program.graph.nodes if n.op == "call_function"
               and getattr(n.target, "namespace", "") == "binattn")


