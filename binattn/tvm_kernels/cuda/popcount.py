"""TVMScript (TIRx) source of binattn's CUDA ``popcount_scores`` kernel (1-bit tensor cores).

What it does: ``popcount_scores_func()`` returns a PrimFunc computing the exact ±1 dot products
``S[bh, i, j] = b_q[i]·b_k[j]`` (int32) from packed words in the public layout
(``[BH, N, W]``, W = ceil(D/32) ≤ 8): each warp issues ``mma.sync.m16n8k256.b1.and.popc`` on
16×8 tiles and applies the AND identity ``4·popc(a&c) − 2·popc(a) − 2·popc(c) + D`` with row
popcounts it computes itself. It is the standalone, bit-exact view of the QKᵀ stage of the
attention kernel, used by the exactness tests and by callers that want the integer scores.

What it does not: scale, mask or softmax (the attention kernel does), D > 256.
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .attention import MMA_B1

WARPS = 4
KEYS_PER_WARP = 64


def popcount_scores_name() -> str:
    """Exported symbol of the popcount-scores kernel."""
    return "binattn_popcount_scores"


def popcount_scores_func() -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(q_bits int32[BH,Nq,W], k_bits int32[BH,Nk,W], scores int32[BH,Nq,Nk],
    D)``."""
    n_tiles = KEYS_PER_WARP // 8

    @T.prim_func
    def popcount_scores(q_h: T.handle, k_h: T.handle, s_h: T.handle, head_dim: T.int32):
        T.func_attr({"global_symbol": popcount_scores_name(), "tirx.noalias": True})
        BH = T.int32()
        Nq = T.int32()
        Nk = T.int32()
        W = T.int32()
        Q = T.match_buffer(q_h, (BH, Nq, W), "int32")
        K = T.match_buffer(k_h, (BH, Nk, W), "int32")
        S = T.match_buffer(s_h, (BH, Nq, Nk), "int32")
        for bx in T.thread_binding(T.ceildiv(Nq, 16 * WARPS), thread="blockIdx.x"):
            for by in T.thread_binding(T.ceildiv(Nk, KEYS_PER_WARP), thread="blockIdx.y"):
                for bh in T.thread_binding(BH, thread="blockIdx.z"):
                    for tid in T.thread_binding(32 * WARPS, thread="threadIdx.x"):
                        qa = T.alloc_buffer((4,), "uint32", scope="local")
                        kb = T.alloc_buffer((2,), "uint32", scope="local")
                        acc = T.alloc_buffer((4,), "uint32", scope="local")
                        qp = T.alloc_buffer((2,), "int32", scope="local")
                        kp = T.alloc_buffer((2,), "int32", scope="local")
                        lane = tid % 32
                        g = lane // 4
                        t = lane % 4
                        q0 = bx * 16 * WARPS + (tid // 32) * 16
                        for r in T.unroll(2):
                            qp[r] = 0
                            if q0 + g + 8 * r < Nq:
                                for w in T.serial(W):
                                    qp[r] = qp[r] + T.popcount(
                                        T.reinterpret("uint32", Q[bh, q0 + g + 8 * r, w]))
                        for i in T.unroll(4):
                            qa[i] = T.if_then_else(
                                q0 + g + 8 * (i % 2) < Nq and t + 4 * (i // 2) < W,
                                T.reinterpret("uint32", Q[bh, T.min(q0 + g + 8 * (i % 2), Nq - 1),
                                                          T.min(t + 4 * (i // 2), W - 1)]),
                                T.uint32(0))
                        for j in T.unroll(n_tiles):
                            n0 = by * KEYS_PER_WARP + 8 * j
                            for i in T.unroll(2):
                                kb[i] = T.if_then_else(
                                    n0 + g < Nk and t + 4 * i < W,
                                    T.reinterpret("uint32", K[bh, T.min(n0 + g, Nk - 1),
                                                              T.min(t + 4 * i, W - 1)]),
                                    T.uint32(0))
                                kp[i] = 0
                                if n0 + 2 * t + i < Nk:
                                    for w in T.serial(W):
                                        kp[i] = kp[i] + T.popcount(
                                            T.reinterpret("uint32", K[bh, n0 + 2 * t + i, w]))
                            for e in T.unroll(4):
                                acc[e] = T.uint32(0)
                            T.ptx[MMA_B1](acc[0], acc[1], acc[2], acc[3], qa[0], qa[1], qa[2],
                                          qa[3], kb[0], kb[1], acc[0], acc[1], acc[2], acc[3])
                            for e in T.unroll(4):
                                if q0 + g + 8 * (e // 2) < Nq and n0 + 2 * t + e % 2 < Nk:
                                    S[bh, q0 + g + 8 * (e // 2), n0 + 2 * t + e % 2] = (
                                        4 * T.reinterpret("int32", acc[e]) - 2 * qp[e // 2]
                                        - 2 * kp[e % 2] + head_dim)

    return popcount_scores
