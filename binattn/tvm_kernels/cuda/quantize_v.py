"""TVMScript (TIRx) source of the CUDA kernels that prepare V for the 8-bit-P·V attention kernel.

What it does, in two launches over ``v`` (16-bit, ``[BH, N, dv]`` read as 16-byte groups):

* ``v8_amax_func(dtype)``: ``max |v|`` per (bh, column), as float bits combined with integer
  ``atomicMax`` (non-negative floats order as their bits): per CTA in shared memory, then one
  global atomic per column and CTA (the caller zeroes the output);
* ``v8_pack_func(dtype)``: ``round(v · inv_step)`` as int8 (round to nearest even, the same
  float32 product as ``reference.quantize_v_s8``; ``inv_step = 127 / max|v|`` comes from the
  caller), written transposed — ``[BH, dv_bucket, keys]``, 4 keys per int32 — with the keys of
  each 32-key block in ``schedules.cuda.attention.pv8_key_permutation`` order, zero past N
  and past dv.

What it does not: decide when it runs or compute the scales from the maxima (``cuda_dispatch``).
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from ...schedules.cuda.attention import PV8_KEY_BLOCK

THREADS = 128
AMAX_ROWS = 64  # rows of V per CTA of the max kernel
MAX_DV = 256


def v8_amax_name(dtype: str) -> str:
    return f"binattn_v8_amax_{dtype}"


def v8_pack_name(dtype: str) -> str:
    return f"binattn_v8_pack_{dtype}"


def _as_float(dtype: str, h):
    """float32 of the 16-bit pattern ``h`` (uint32 holding 16 bits)."""
    if dtype == "bfloat16":
        return T.reinterpret("float32", h << T.uint32(16))
    return T.Cast("float32", T.reinterpret("float16", T.Cast("uint16", h)))


def _check(dtype: str) -> None:
    if dtype not in ("float16", "bfloat16"):
        raise ValueError(f"no V quantisation kernel for dtype {dtype!r}")


def v8_amax_func(dtype: str) -> tvm.tirx.PrimFunc:
    """``amax_bits int32[B·H, DQ·8] = max(amax_bits, bits(max |v|))`` for ``v32 int32[B, H, N,
    DQ, 4]`` (read through its strides: any on B, H, N)."""
    _check(dtype)

    @T.prim_func
    def v8_amax(v_h: T.handle, amax_h: T.handle):
        T.func_attr({"global_symbol": v8_amax_name(dtype), "tirx.noalias": True})
        B, H, N, DQ = T.int32(), T.int32(), T.int32(), T.int32()
        sb, sh, sn = T.int32(), T.int32(), T.int32()
        V = T.match_buffer(v_h, (B, H, N, DQ, 4), "int32", strides=(sb, sh, sn, 4, 1))
        Amax = T.match_buffer(amax_h, (B * H, DQ * 8), "int32")
        for bx in T.thread_binding(T.ceildiv(N, AMAX_ROWS), thread="blockIdx.x"):
            for bh in T.thread_binding(B * H, thread="blockIdx.y"):
                for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                    smax = T.alloc_buffer((MAX_DV,), "int32", scope="shared")
                    raw = T.alloc_buffer((4,), "int32", scope="local")
                    for it in T.serial(T.ceildiv(MAX_DV, THREADS)):
                        if tid + it * THREADS < MAX_DV:
                            smax[tid + it * THREADS] = 0
                    T.tvm_storage_sync("shared")
                    for it in T.serial(T.ceildiv(AMAX_ROWS * DQ, THREADS)):
                        u = tid + it * THREADS
                        n = bx * AMAX_ROWS + u // DQ
                        if u < AMAX_ROWS * DQ and n < N:
                            raw[T.ramp(0, 1, 4)] = V[bh // H, bh % H, n, u % DQ, T.ramp(0, 1, 4)]
                            for e in T.unroll(8):
                                # |v| as float bits: the 16-bit pattern without its sign
                                T.evaluate(T.call_extern(
                                    "int32", "atomicMax", T.address_of(smax[(u % DQ) * 8 + e]),
                                    T.reinterpret("int32", _as_float(
                                        dtype, (T.reinterpret("uint32", raw[e // 2])
                                                >> T.uint32(16 * (e % 2)))
                                        & T.uint32(0x7FFF)))))
                    T.tvm_storage_sync("shared")
                    for it in T.serial(T.ceildiv(MAX_DV, THREADS)):
                        if tid + it * THREADS < DQ * 8:
                            T.evaluate(T.call_extern("int32", "atomicMax",
                                                     T.address_of(Amax[bh, tid + it * THREADS]),
                                                     smax[tid + it * THREADS]))

    return v8_amax


def v8_pack_func(dtype: str) -> tvm.tirx.PrimFunc:
    """``v8 int32[BH, DV, NKW]`` (int8 × 4, transposed, keys permuted per 32-key block) from
    ``v32 int32[B, H, N, DQ, 4]`` (any strides on B, H, N) and ``inv_step f32[B·H, DV]`` (0 past
    the true dv: zero rows)."""
    _check(dtype)
    kb = PV8_KEY_BLOCK

    @T.prim_func
    def v8_pack(v_h: T.handle, inv_h: T.handle, out_h: T.handle):
        T.func_attr({"global_symbol": v8_pack_name(dtype), "tirx.noalias": True})
        B, H, N, DQ, DV, NKW = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        sb, sh, sn = T.int32(), T.int32(), T.int32()
        V = T.match_buffer(v_h, (B, H, N, DQ, 4), "int32", strides=(sb, sh, sn, 4, 1))
        Inv = T.match_buffer(inv_h, (B * H, DV), "float32")
        Out = T.match_buffer(out_h, (B * H, DV, NKW), "int32")
        for blk in T.thread_binding(NKW // (kb // 4), thread="blockIdx.x"):
            for bh in T.thread_binding(B * H, thread="blockIdx.y"):
                for tid in T.thread_binding(THREADS, thread="threadIdx.x"):
                    # the block's keys × V row (16-bit pairs), one padding word per key row
                    tile = T.alloc_buffer((kb, MAX_DV // 2 + 1), "int32", scope="shared")
                    word = T.alloc_buffer((1,), "uint32", scope="local")
                    for it in T.serial(T.ceildiv(kb * DQ, THREADS)):
                        u = tid + it * THREADS
                        key = blk * kb + u // DQ
                        if u < kb * DQ:
                            for i in T.unroll(4):
                                tile[u // DQ, (u % DQ) * 4 + i] = T.if_then_else(
                                    key < N, V[bh // H, bh % H, T.min(key, N - 1), u % DQ, i], 0)
                    T.tvm_storage_sync("shared")
                    for it in T.serial(T.ceildiv(DV * (kb // 4), THREADS)):
                        u = tid + it * THREADS
                        d = u // (kb // 4)
                        w = u % (kb // 4)
                        if u < DV * (kb // 4):
                            word[0] = T.uint32(0)
                            if d < DQ * 8:
                                for i in T.unroll(4):
                                    # position 4w + i holds key 16c + 8a + 2t + b
                                    # (pos = 16c + 4t + 2a + b)
                                    word[0] = word[0] | ((T.reinterpret("uint32", T.call_extern(
                                        "int32", "__float2int_rn",
                                        _as_float(dtype, (T.reinterpret("uint32", tile[
                                            16 * ((4 * w + i) // 16) + 8 * (i // 2)
                                            + 2 * (w % 4) + i % 2,
                                            d // 2]) >> T.uint32(16 * (d % 2))) & T.uint32(0xFFFF))
                                            * Inv[bh, d]))
                                        & T.uint32(0xFF)) << T.uint32(8 * i))
                            Out[bh, d, blk * (kb // 4) + w] = T.reinterpret("int32", word[0])

    return v8_pack
