"""TVMScript (TIRx) source of binattn's fused CUDA sign-pack kernel.

What it does: ``sign_pack_func(dtype)`` returns a PrimFunc that, in one pass over ``x [BH, N, D]``
(D ≤ 256), writes the sign bits in DESIGN.md's layout (bit j of word w is 1 iff
``x[32w + j] >= 0``, padding bits 0) into ``bits [BH, N, WS]`` — ``WS = ceil(D/32)`` gives the
public layout, ``WS = 8`` the 256-bit-per-row layout the attention kernel's b1 tensor-core
fragments read (extra words are written as 0) — plus the row popcounts ``pops [BH, N]`` (as
``pop_offset + pop_scale · popc``: (0, 1) for the op, (SCORE_MAGIC, −1) for the attention
kernel's keys, which then need no arithmetic per key) and
adds ``sum |x|`` of each (b, h) into ``abs_sum [BH]`` (the caller zeroes it; mean|x| is that
over N·D). One thread builds one word (32 independent loads in flight, compare, shift, or), the
lanes of a row (8; 2 or 4 in the 16-byte-load kernel for short heads) sum their popcounts with
shuffles; the |x| sums are reduced per warp, then per CTA, then
one ``atomicAdd`` per CTA.

What it does not: launch anything or choose the layout (``cuda_dispatch`` does).
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

WARPS = 4
MAX_WORDS = 8  # D <= 256: 8 lanes per row, one per 32-bit word
DTYPES = ("float16", "bfloat16", "float32")


VEC_LANES = (2, 4, 8)  # lanes per row of the 16-byte-load kernel: D ≤ 64, ≤ 128, ≤ 256


@T.macro
def add_abs_sum(AbsSum, slot, tid, acc, warp_sums):
    """``AbsSum[slot] += Σ acc`` over the CTA: warp shuffles, then the warps' sums in shared
    memory, then one ``atomicAdd`` per CTA."""
    for sh in T.unroll(5):
        acc[0] = acc[0] + T.call_extern("float32", "__shfl_xor_sync", T.uint32(0xFFFFFFFF),
                                        acc[0], 16 >> sh, 32)
    if tid % 32 == 0:
        warp_sums[tid // 32] = acc[0]
    T.tvm_storage_sync("shared")
    if tid == 0:
        for i in T.unroll(WARPS - 1):
            acc[0] = acc[0] + warp_sums[i + 1]
        T.evaluate(T.call_extern("float32", "atomicAdd", T.address_of(AbsSum[slot]), acc[0]))


def sign_pack_name(dtype: str, vec: bool = False, lanes: int = MAX_WORDS) -> str:
    """Exported symbol of the sign-pack kernel for an input dtype (``vec``: 16-byte loads, with
    ``lanes`` threads per row)."""
    if not vec:
        return f"binattn_sign_pack_{dtype}"
    return f"binattn_sign_pack_{dtype}_v8{'' if lanes == MAX_WORDS else f'_l{lanes}'}"


def _vec_pack_macro(dtype: str, lanes: int):
    """The body of the 16-byte-load sign-pack as a TVMScript macro: CTA ``bx`` of the rows of
    ``X[bh]`` (``n_rows`` of them) → ``Bits[bh]``, ``Pops[bh]`` (skipped when ``write_pops`` is
    False) and ``AbsSum[abs_slot] += Σ|x|``, with the calling kernel's thread index, popcount
    form, shared and local buffers."""
    full = T.uint32(0xFFFFFFFF)
    rows_per_cta = WARPS * 32 // lanes

    def magnitude(h):
        if dtype == "bfloat16":
            return T.reinterpret("float32", (h & T.uint32(0x7FFF)) << T.uint32(16))
        return T.Cast("float32", T.reinterpret("float16", T.Cast("uint16", h & T.uint32(0x7FFF))))

    @T.macro
    def pack_rows(X, Bits, Pops, write_pops, AbsSum, abs_slot, bh, heads, bx, n_rows, DQ, WS,
                  tid, pop_offset, pop_scale, warp_sums, raw, acc, pop, word):
        w = tid % lanes
        n = bx * rows_per_cta + tid // lanes
        for i in T.unroll(4):
            if n < n_rows and 4 * w + i < DQ:
                raw[T.ramp(4 * i, 1, 4)] = X[bh // heads, bh % heads, n, 4 * w + i, T.ramp(0, 1, 4)]
            else:
                raw[T.ramp(4 * i, 1, 4)] = T.Broadcast(T.int32(0), 4)
        word[0] = T.uint32(0)
        acc[0] = T.float32(0)
        for e in T.unroll(32):
            h = (T.reinterpret("uint32", raw[e // 2]) >> T.uint32(16 * (e % 2))) & T.uint32(0xFFFF)
            word[0] = word[0] | T.Cast("uint32", (n < n_rows and 4 * w + e // 8 < DQ) and (
                h < T.uint32(0x8000) or h == T.uint32(0x8000))) << T.uint32(e)
            acc[0] = acc[0] + magnitude(h)
        if n < n_rows and w < WS:
            Bits[bh, n, w] = T.reinterpret("int32", word[0])
        for z in T.unroll(MAX_WORDS // lanes - 1):
            if n < n_rows and w + lanes * (z + 1) < WS:
                Bits[bh, n, w + lanes * (z + 1)] = T.int32(0)
        if write_pops:
            pop[0] = T.popcount(word[0])
            for sh in T.unroll(lanes.bit_length() - 1):
                pop[0] = pop[0] + T.call_extern("int32", "__shfl_xor_sync", full, pop[0],
                                                1 << sh, 32)
            if n < n_rows and w == 0:
                Pops[bh, n] = pop_offset + pop_scale * pop[0]
        add_abs_sum(AbsSum, abs_slot, tid, acc, warp_sums)

    return pack_rows


def _check_vec(dtype: str, lanes: int) -> None:
    if dtype not in ("float16", "bfloat16"):
        raise ValueError(f"no vectorized sign-pack kernel for dtype {dtype!r}")
    if lanes not in VEC_LANES:
        raise ValueError(f"lanes must be one of {VEC_LANES}, got {lanes}")


def sign_pack_vec_func(dtype: str, lanes: int = MAX_WORDS) -> tvm.tirx.PrimFunc:
    """Sign-pack for 16-bit inputs with D % 8 == 0, reading ``x`` as int32 quads (16-byte loads).

    ``x32 int32[BH, N, D/8, 4]`` is x viewed as pairs of 16-bit values; otherwise as
    :func:`sign_pack_func`. ``x >= 0`` is tested on the bits (sign clear, or ±0). ``lanes``
    threads share a row (D ≤ 32·lanes): lane w packs word w and writes the zero words
    w + lanes, w + 2·lanes, … of the padded layout, so short heads keep every thread loading.
    """
    _check_vec(dtype, lanes)
    rows_per_cta = WARPS * 32 // lanes
    pack_rows = _vec_pack_macro(dtype, lanes)

    @T.prim_func
    def sign_pack_vec(x_h: T.handle, bits_h: T.handle, pops_h: T.handle, abs_h: T.handle,
                      pop_offset: T.int32, pop_scale: T.int32):
        T.func_attr({"global_symbol": sign_pack_name(dtype, True, lanes), "tirx.noalias": True})
        B, H, N, DQ, WS = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        sb, sh, sn = T.int32(), T.int32(), T.int32()
        X = T.match_buffer(x_h, (B, H, N, DQ, 4), "int32", strides=(sb, sh, sn, 4, 1))
        Bits = T.match_buffer(bits_h, (B * H, N, WS), "int32")
        Pops = T.match_buffer(pops_h, (B * H, N), "int32")
        AbsSum = T.match_buffer(abs_h, (B * H,), "float32")
        for bx in T.thread_binding(T.ceildiv(N, rows_per_cta), thread="blockIdx.x"):
            for bh in T.thread_binding(B * H, thread="blockIdx.y"):
                for tid in T.thread_binding(32 * WARPS, thread="threadIdx.x"):
                    warp_sums = T.alloc_buffer((WARPS,), "float32", scope="shared")
                    raw = T.alloc_buffer((16,), "int32", scope="local")
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    pop = T.alloc_buffer((1,), "int32", scope="local")
                    word = T.alloc_buffer((1,), "uint32", scope="local")
                    pack_rows(X, Bits, Pops, True, AbsSum, bh, bh, H, bx, N, DQ, WS, tid,
                              pop_offset, pop_scale, warp_sums, raw, acc, pop, word)

    return sign_pack_vec


def sign_pack_qk_name(dtype: str, lanes: int) -> str:
    """Exported symbol of the one-launch q-and-k sign-pack kernel."""
    return f"binattn_sign_pack_qk_{dtype}_l{lanes}"


def sign_pack_qk_func(dtype: str, lanes: int) -> tvm.tirx.PrimFunc:
    """q and k of one attention call packed in one launch (16-bit, D % 8 == 0, 16-byte loads).

    Arguments: ``xq int32[BHq, Nq, D/8, 4]``, ``xk int32[BHk, Nk, D/8, 4]`` (16-bit pairs),
    ``qbits int32[BHq, Nq, WS]``, ``kbits int32[BHk, Nk, WS]``, ``kpops int32[BHk, Nk]``
    (``pop_offset + pop_scale·popc``; the q popcounts are not written: the attention kernel
    does not read them), ``abs_sum f32[NA]`` (zeroed by the caller; q's Σ|x| of (b, h) goes to
    slot bh, k's to ``k_slot0 + bh``), then ``pop_offset, pop_scale, k_slot0``. The CTAs of
    q's rows come first on one grid axis, then k's, each as in :func:`sign_pack_vec_func`: one
    launch instead of two, and one zeroed buffer for both sums.
    """
    _check_vec(dtype, lanes)
    rows_per_cta = WARPS * 32 // lanes
    pack_rows = _vec_pack_macro(dtype, lanes)

    @T.prim_func
    def sign_pack_qk(xq_h: T.handle, xk_h: T.handle, qbits_h: T.handle, kbits_h: T.handle,
                     kpops_h: T.handle, abs_h: T.handle, pop_offset: T.int32,
                     pop_scale: T.int32, k_slot0: T.int32):
        T.func_attr({"global_symbol": sign_pack_qk_name(dtype, lanes), "tirx.noalias": True})
        B, Hq, Hk, Nq, Nk = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        DQ, WS, NA = T.int32(), T.int32(), T.int32()
        qsb, qsh, qsn, ksb, ksh, ksn = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                        T.int32())
        Xq = T.match_buffer(xq_h, (B, Hq, Nq, DQ, 4), "int32", strides=(qsb, qsh, qsn, 4, 1))
        Xk = T.match_buffer(xk_h, (B, Hk, Nk, DQ, 4), "int32", strides=(ksb, ksh, ksn, 4, 1))
        Qbits = T.match_buffer(qbits_h, (B * Hq, Nq, WS), "int32")
        Kbits = T.match_buffer(kbits_h, (B * Hk, Nk, WS), "int32")
        Kpops = T.match_buffer(kpops_h, (B * Hk, Nk), "int32")
        AbsSum = T.match_buffer(abs_h, (NA,), "float32")
        for blk in T.thread_binding(T.ceildiv(Nq, rows_per_cta) * B * Hq
                                    + T.ceildiv(Nk, rows_per_cta) * B * Hk,
                                    thread="blockIdx.x"):
            for tid in T.thread_binding(32 * WARPS, thread="threadIdx.x"):
                warp_sums = T.alloc_buffer((WARPS,), "float32", scope="shared")
                raw = T.alloc_buffer((16,), "int32", scope="local")
                acc = T.alloc_buffer((1,), "float32", scope="local")
                pop = T.alloc_buffer((1,), "int32", scope="local")
                word = T.alloc_buffer((1,), "uint32", scope="local")
                q_ctas = T.ceildiv(Nq, rows_per_cta)
                k_ctas = T.ceildiv(Nk, rows_per_cta)
                if blk < q_ctas * B * Hq:
                    pack_rows(Xq, Qbits, Kpops, False, AbsSum, blk // q_ctas, blk // q_ctas, Hq,
                              blk % q_ctas, Nq, DQ, WS, tid, pop_offset, pop_scale, warp_sums,
                              raw, acc, pop, word)
                else:
                    kblk = blk - q_ctas * B * Hq
                    pack_rows(Xk, Kbits, Kpops, True, AbsSum, k_slot0 + kblk // k_ctas,
                              kblk // k_ctas, Hk, kblk % k_ctas, Nk, DQ, WS, tid, pop_offset,
                              pop_scale, warp_sums, raw, acc, pop, word)

    return sign_pack_qk


def sign_pack_func(dtype: str) -> tvm.tirx.PrimFunc:
    """The sign-pack PrimFunc for inputs of ``dtype`` (float16|bfloat16|float32)."""
    if dtype not in DTYPES:
        raise ValueError(f"no sign-pack kernel for dtype {dtype!r}")
    rows_per_cta = WARPS * 32 // MAX_WORDS
    full = T.uint32(0xFFFFFFFF)

    @T.prim_func
    def sign_pack(x_h: T.handle, bits_h: T.handle, pops_h: T.handle, abs_h: T.handle,
                  pop_offset: T.int32, pop_scale: T.int32):
        T.func_attr({"global_symbol": sign_pack_name(dtype), "tirx.noalias": True})
        B, H, N, D, WS = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        sb, sh, sn = T.int32(), T.int32(), T.int32()
        X = T.match_buffer(x_h, (B, H, N, D), dtype, strides=(sb, sh, sn, 1))
        Bits = T.match_buffer(bits_h, (B * H, N, WS), "int32")
        Pops = T.match_buffer(pops_h, (B * H, N), "int32")
        AbsSum = T.match_buffer(abs_h, (B * H,), "float32")
        for bx in T.thread_binding(T.ceildiv(N, rows_per_cta), thread="blockIdx.x"):
            for bh in T.thread_binding(B * H, thread="blockIdx.y"):
                for tid in T.thread_binding(32 * WARPS, thread="threadIdx.x"):
                    warp_sums = T.alloc_buffer((WARPS,), "float32", scope="shared")
                    val = T.alloc_buffer((32,), "float32", scope="local")
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    pop = T.alloc_buffer((1,), "int32", scope="local")
                    word = T.alloc_buffer((1,), "uint32", scope="local")
                    w = tid % MAX_WORDS
                    n = bx * rows_per_cta + tid // MAX_WORDS
                    # one thread per (row, word): 32 independent loads in flight
                    for e in T.unroll(32):
                        val[e] = T.if_then_else(
                            n < N and 32 * w + e < D,
                            T.Cast("float32", X[bh // H, bh % H, T.min(n, N - 1),
                                                T.min(32 * w + e, D - 1)]),
                            T.float32(0))
                    word[0] = T.uint32(0)
                    acc[0] = T.float32(0)
                    for e in T.unroll(32):
                        word[0] = word[0] | T.Cast(
                            "uint32", n < N and 32 * w + e < D and val[e] >= T.float32(0)
                        ) << T.uint32(e)
                        acc[0] = acc[0] + T.fabs(val[e])
                    pop[0] = T.popcount(word[0])
                    for sh in T.unroll(3):
                        pop[0] = pop[0] + T.call_extern("int32", "__shfl_xor_sync", full,
                                                        pop[0], 1 << sh, 32)
                    if n < N and w < WS:
                        Bits[bh, n, w] = T.reinterpret("int32", word[0])
                    if n < N and w == 0:
                        Pops[bh, n] = pop_offset + pop_scale * pop[0]
                    add_abs_sum(AbsSum, bh, tid, acc, warp_sums)

    return sign_pack
