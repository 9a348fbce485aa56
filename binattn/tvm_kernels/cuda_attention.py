"""TVMScript (TIRx) source of binattn's fused binary flash-attention forward for CUDA.

What it does: ``attention_func(dtype, dv, schedule)`` returns a PrimFunc that computes, for every
(b, h) and query row, ``softmax(s_q·s_k·scale·(b_q·b_kᵀ) + bias) · V`` in one pass over the keys
(FlashAttention-2 style, no N×N tensor):

* QKᵀ runs on the 1-bit tensor cores: one ``mma.sync.m16n8k256.b1.and.popc`` per 16×8 score
  tile (D ≤ 256 fits one 256-bit chunk; padding bits are 0), turned into the exact ±1 dot
  product by the AND identity ``4·popc(a&c) − 2·popc(a) − 2·popc(c) + D`` with the row
  popcounts from the sign-pack kernel;
* online softmax in fp32 in the log2 domain (``ex2.approx``), one running max/sum per row,
  kept per quad of lanes and reduced with warp shuffles;
* P is rounded to fp16/bf16 in registers and reused directly as the A fragment of
  ``mma.sync.m16n8k16`` (the accumulator layout of the b1 mma equals the A layout of the
  16-bit one), V is staged transposed in shared memory as 16-bit pairs;
* optional additive bias (any broadcast strides; the host folds masks into it), causal
  masking with early exit, GQA (kv head = h // group), rows with no visible key give 0.

Each CTA holds ``schedule.warps`` warps × 16 query rows of one (b, h); each step stages
``schedule.key_block`` keys (bits, popcounts and V) in shared memory.

What it does not: pack signs or compute the scales (``cuda_sign_pack``), build or load the
module (``cuda_build`` / ``cuda_dispatch``), 8-bit P/V, top-N, soft binarizers, backward.
Those run the reference through the dispatcher's fallback.
"""
from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

from ..schedules.cuda_attention import CudaAttentionSchedule

LOG2E = 1.4426950408889634
QBITS_WORDS = 8  # tensor-core layout: every row padded to one 256-bit K chunk
MMA_PV = {"float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
          "bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"}
CVT_PAIR = {"float16": "cvt.rn.f16x2.f32", "bfloat16": "cvt.rn.bf16x2.f32"}
MMA_B1 = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc"


def attention_name(dtype: str, dv: int) -> str:
    """Exported symbol of the attention kernel for (dtype, padded value head size)."""
    return f"binattn_attention_{dtype}_dv{dv}"


def attention_func(dtype: str, dv: int, schedule: CudaAttentionSchedule) -> tvm.tirx.PrimFunc:
    """The attention PrimFunc for ``dtype`` (float16|bfloat16) and padded value head size ``dv``.

    Arguments of the generated function (torch tensors through DLPack, all contiguous):
    ``qbits int32[B,Hq,Nq,8]``, ``qpop int32[B,Hq,Nq]``, ``kbits int32[B,Hkv,Nk,8]``,
    ``kpop int32[B,Hkv,Nk]``, ``v32 int32[B,Hkv,Nk,Dv/2]`` (v viewed as 16-bit pairs),
    ``out32 int32[B,Hq,Nq,Dv/2]``, ``qscale f32[B*Hq]``, ``kscale f32[B*Hks]``,
    ``bias f32[nbias]`` (flat; indexed with the strides below), then scalars
    ``head_dim, causal, has_bias, ks_group, bias_sb, bias_sh, bias_sq, bias_sk`` and ``mult``
    (the product of everything else in the score coefficient, already times log2 e).
    """
    schedule.check()
    if dtype not in MMA_PV or dv % 8 or not 8 <= dv <= 256:
        raise ValueError(f"no attention kernel for dtype={dtype!r}, dv={dv}")
    warps, kb = schedule.warps, schedule.key_block
    nthreads, rows_per_cta = 32 * warps, 16 * warps
    n_tiles, n_chunks, o_tiles = kb // 8, kb // 16, dv // 8
    dv_words, kb_pairs = dv // 2, kb // 2
    vt_stride = kb_pairs + 4  # words; +4 keeps the B-fragment reads of 8 lanes on 8 banks
    k_load_iters = math.ceil(kb * QBITS_WORDS / nthreads)
    v_load_iters = math.ceil(kb_pairs * dv_words / nthreads)
    mma_pv, cvt_pair = MMA_PV[dtype], CVT_PAIR[dtype]
    neg_inf = T.float32(-math.inf)
    full = T.uint32(0xFFFFFFFF)

    @T.prim_func
    def attention(qbits_h: T.handle, qpop_h: T.handle, kbits_h: T.handle, kpop_h: T.handle,
                  v_h: T.handle, out_h: T.handle, qscale_h: T.handle, kscale_h: T.handle,
                  bias_h: T.handle, head_dim: T.int32, causal: T.int32, has_bias: T.int32,
                  ks_group: T.int32, bias_sb: T.int32, bias_sh: T.int32, bias_sq: T.int32,
                  bias_sk: T.int32, mult: T.float32):
        T.func_attr({"global_symbol": attention_name(dtype, dv), "tirx.noalias": True})
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Hks = T.int32()
        Nq = T.int32()
        Nk = T.int32()
        Dw = T.int32()
        NB = T.int32()
        Qb = T.match_buffer(qbits_h, (B, Hq, Nq, QBITS_WORDS), "int32")
        Qp = T.match_buffer(qpop_h, (B, Hq, Nq), "int32")
        Kb = T.match_buffer(kbits_h, (B, Hkv, Nk, QBITS_WORDS), "int32")
        Kp = T.match_buffer(kpop_h, (B, Hkv, Nk), "int32")
        V = T.match_buffer(v_h, (B, Hkv, Nk, Dw), "int32")
        O = T.match_buffer(out_h, (B, Hq, Nq, Dw), "int32")
        Sq = T.match_buffer(qscale_h, (B * Hq,), "float32")
        Sk = T.match_buffer(kscale_h, (Hks,), "float32")
        Bias = T.match_buffer(bias_h, (NB,), "float32")
        for bx in T.thread_binding(T.ceildiv(Nq, rows_per_cta), thread="blockIdx.x"):
            for bh in T.thread_binding(B * Hq, thread="blockIdx.y"):
                for tid in T.thread_binding(nthreads, thread="threadIdx.x"):
                    Ks = T.alloc_buffer((kb, QBITS_WORDS), "uint32", scope="shared")
                    Kps = T.alloc_buffer((kb,), "int32", scope="shared")
                    Vt = T.alloc_buffer((dv, vt_stride), "uint32", scope="shared")
                    qa = T.alloc_buffer((4,), "uint32", scope="local")
                    base = T.alloc_buffer((2,), "int32", scope="local")
                    row = T.alloc_buffer((2,), "int32", scope="local")
                    m = T.alloc_buffer((2,), "float32", scope="local")
                    msub = T.alloc_buffer((2,), "float32", scope="local")
                    alpha = T.alloc_buffer((2,), "float32", scope="local")
                    lsum = T.alloc_buffer((2,), "float32", scope="local")
                    red = T.alloc_buffer((2,), "float32", scope="local")
                    acc = T.alloc_buffer((4,), "uint32", scope="local")
                    s = T.alloc_buffer((n_tiles * 4,), "float32", scope="local")
                    pa = T.alloc_buffer((n_chunks * 4,), "uint32", scope="local")
                    o = T.alloc_buffer((o_tiles * 4,), "float32", scope="local")
                    coef = T.alloc_buffer((1,), "float32", scope="local")
                    b = bh // Hq
                    h = bh % Hq
                    hk = h // (Hq // Hkv)
                    lane = tid % 32
                    g = lane // 4
                    t = lane % 4
                    q_first = bx * rows_per_cta
                    q0 = q_first + (tid // 32) * 16
                    coef[0] = Sq[bh] * Sk[b * (Hks // B) + h // ks_group] * mult
                    for r in T.unroll(2):
                        row[r] = q0 + g + 8 * r
                        base[r] = T.if_then_else(row[r] < Nq, head_dim - 2 * Qp[b, h, T.min(row[r], Nq - 1)], 0)
                        m[r] = neg_inf
                        lsum[r] = T.float32(0)
                    for i in T.unroll(4):
                        qa[i] = T.if_then_else(row[i % 2] < Nq, T.reinterpret("uint32", Qb[b, h, T.min(row[i % 2], Nq - 1), t + 4 * (i // 2)]), T.uint32(0))
                    for i in T.unroll(o_tiles * 4):
                        o[i] = T.float32(0)
                    kv_len = T.if_then_else(causal != 0, T.min(Nk, T.min(Nq, q_first + rows_per_cta)), Nk)
                    for kblk in T.serial(T.ceildiv(kv_len, kb)):
                        k0 = kblk * kb
                        T.tvm_storage_sync("shared")
                        for it in T.unroll(k_load_iters):
                            idx = tid + it * nthreads
                            if idx < kb * QBITS_WORDS:
                                key = idx // QBITS_WORDS
                                Ks[key, idx % QBITS_WORDS] = T.if_then_else(k0 + key < Nk, T.reinterpret("uint32", Kb[b, hk, T.min(k0 + key, Nk - 1), idx % QBITS_WORDS]), T.uint32(0))
                        if tid < kb:
                            Kps[tid] = T.if_then_else(k0 + tid < Nk, Kp[b, hk, T.min(k0 + tid, Nk - 1)], 0)
                        for it in T.unroll(v_load_iters):
                            idx = tid + it * nthreads
                            if idx < kb_pairs * dv_words:
                                p = idx // dv_words
                                dw = idx % dv_words
                                k_even = k0 + 2 * p
                                w0 = T.if_then_else(k_even < Nk and dw < Dw, T.reinterpret("uint32", V[b, hk, T.min(k_even, Nk - 1), T.min(dw, Dw - 1)]), T.uint32(0))
                                w1 = T.if_then_else(k_even + 1 < Nk and dw < Dw, T.reinterpret("uint32", V[b, hk, T.min(k_even + 1, Nk - 1), T.min(dw, Dw - 1)]), T.uint32(0))
                                Vt[2 * dw, p] = (w0 & T.uint32(0xFFFF)) | (w1 << T.uint32(16))
                                Vt[2 * dw + 1, p] = (w0 >> T.uint32(16)) | (w1 & T.uint32(0xFFFF0000))
                        T.tvm_storage_sync("shared")
                        # S = popc(q AND k) on the 1-bit tensor cores, then exact ±1 dots → log2 scores
                        for j in T.unroll(n_tiles):
                            for e in T.unroll(4):
                                acc[e] = T.uint32(0)
                            T.ptx[MMA_B1](acc[0], acc[1], acc[2], acc[3], qa[0], qa[1], qa[2], qa[3], Ks[8 * j + g, t], Ks[8 * j + g, t + 4], acc[0], acc[1], acc[2], acc[3])
                            for e in T.unroll(4):
                                key_l = 8 * j + 2 * t + e % 2
                                key = k0 + key_l
                                x = T.Cast("float32", 4 * T.reinterpret("int32", acc[e]) - 2 * Kps[key_l] + base[e // 2]) * coef[0]
                                if has_bias != 0:
                                    x = x + Bias[b * bias_sb + h * bias_sh + T.min(row[e // 2], Nq - 1) * bias_sq + T.min(key, Nk - 1) * bias_sk] * T.float32(LOG2E)
                                s[j * 4 + e] = T.if_then_else(key >= Nk or (causal != 0 and key > row[e // 2]), neg_inf, x)
                        # online softmax (rows g and g+8 of this warp's 16; a quad of lanes shares a row)
                        for r in T.unroll(2):
                            red[r] = neg_inf
                            for j in T.unroll(n_tiles):
                                red[r] = T.max(red[r], T.max(s[j * 4 + 2 * r], s[j * 4 + 2 * r + 1]))
                            red[r] = T.max(red[r], T.call_extern("float32", "__shfl_xor_sync", full, red[r], 1, 32))
                            red[r] = T.max(red[r], T.call_extern("float32", "__shfl_xor_sync", full, red[r], 2, 32))
                            red[r] = T.max(m[r], red[r])
                            msub[r] = T.if_then_else(red[r] == neg_inf, T.float32(0), red[r])
                            T.ptx["ex2.approx.ftz.f32"](alpha[r], m[r] - msub[r])
                            m[r] = red[r]
                            red[r] = T.float32(0)
                        for j in T.unroll(n_tiles):
                            for e in T.unroll(4):
                                T.ptx["ex2.approx.ftz.f32"](s[j * 4 + e], s[j * 4 + e] - msub[e // 2])
                                red[e // 2] = red[e // 2] + s[j * 4 + e]
                        for r in T.unroll(2):
                            lsum[r] = lsum[r] * alpha[r] + red[r]
                        for i in T.unroll(o_tiles * 4):
                            o[i] = o[i] * alpha[(i % 4) // 2]
                        # P (registers, 16-bit) @ V (shared, transposed pairs) on the 16-bit tensor cores
                        for c in T.unroll(n_chunks):
                            for i in T.unroll(4):
                                T.ptx[cvt_pair](pa[c * 4 + i], s[(2 * c + i // 2) * 4 + 2 * (i % 2) + 1], s[(2 * c + i // 2) * 4 + 2 * (i % 2)])
                        for c in T.unroll(n_chunks):
                            for n in T.unroll(o_tiles):
                                T.ptx[mma_pv](o[n * 4], o[n * 4 + 1], o[n * 4 + 2], o[n * 4 + 3], pa[c * 4], pa[c * 4 + 1], pa[c * 4 + 2], pa[c * 4 + 3], Vt[8 * n + g, 8 * c + t], Vt[8 * n + g, 8 * c + t + 4], o[n * 4], o[n * 4 + 1], o[n * 4 + 2], o[n * 4 + 3])
                    for r in T.unroll(2):
                        lsum[r] = lsum[r] + T.call_extern("float32", "__shfl_xor_sync", full, lsum[r], 1, 32)
                        lsum[r] = lsum[r] + T.call_extern("float32", "__shfl_xor_sync", full, lsum[r], 2, 32)
                        lsum[r] = T.if_then_else(lsum[r] > T.float32(0), T.float32(1) / lsum[r], T.float32(0))
                    for n in T.unroll(o_tiles):
                        for r in T.unroll(2):
                            if row[r] < Nq and 4 * n + t < Dw:
                                T.ptx[cvt_pair](acc[0], o[n * 4 + 2 * r + 1] * lsum[r], o[n * 4 + 2 * r] * lsum[r])
                                O[b, h, row[r], 4 * n + t] = T.reinterpret("int32", acc[0])

    return attention
