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


def attention_name(dtype: str, dv: int, has_bias: bool = False) -> str:
    """Exported symbol of the attention kernel for (dtype, padded value head size, bias or not)."""
    return f"binattn_attention_{dtype}_dv{dv}{'_bias' if has_bias else ''}"


MAGIC = 0x4B400000  # float bits of 1.5·2**23: as_float(MAGIC + i) == 1.5·2**23 + i for |i| < 2**22
MASKED = -16777216  # 0xFF000000: negative as int32, about -1.7e38 as float32


def vt_col(p):
    """Column of key pair ``p`` in a V^T row: pairs 8c+t and 8c+t+4 of chunks c = 2cc, 2cc+1
    sit in the 4 adjacent words at 16·cc + 4·t, the order one lane's B fragments need."""
    return (p // 16) * 16 + (p % 4) * 4 + ((p // 8) % 2) * 2 + (p // 4) % 2


def attention_func(dtype: str, dv: int, schedule: CudaAttentionSchedule,
                   has_bias: bool = False) -> tvm.tirx.PrimFunc:
    """The attention PrimFunc for ``dtype`` (float16|bfloat16) and padded value head size ``dv``.

    Arguments of the generated function (torch tensors through DLPack, all contiguous):
    ``qbits int32[B,Hq,Nq,8]``, ``kbits int32[B,Hkv,Nk,8]``, ``kpop int32[B,Hkv,Nk]``,
    ``v32 int32[B,Hkv,Nk,Dv/8,4]`` (v viewed as 16-bit pairs, 16-byte groups; Dv % 8 == 0),
    ``out32 int32[B,Hq,Nq,Dv/2]``, ``qscale f32[B*Hq]``, ``kscale f32[B*Hks]``,
    ``bias f32[nbias]`` (flat; indexed with the strides below; ignored without ``has_bias``),
    then scalars ``causal, ks_group, bias_sb, bias_sh, bias_sq, bias_sk`` and ``mult`` (the
    rest of the score coefficient, times log2 e).

    Scores: the AND identity ``4·popc(a&c) − 2·popc(a) − 2·popc(c) + D`` minus its per-row
    constant ``D − 2·popc(a)`` (softmax is invariant to it) is ``2·(2·popc(a&c) − popc(c))``;
    the kernel forms ``t = 2·acc − popc(c) + MAGIC`` as int32 bits (one LEA), so
    ``as_float(t) − 1.5·2**23`` is that integer exactly, with no int→float conversion. Padded keys
    carry ``MASKED`` in place of ``2**23 − popc(c)``. Without bias the running row max is taken
    on the integers.
    """
    schedule.check()
    if dtype not in MMA_PV or dv % 8 or not 8 <= dv <= 256:
        raise ValueError(f"no attention kernel for dtype={dtype!r}, dv={dv}")
    warps, kb = schedule.warps, schedule.key_block
    nthreads, rows_per_cta = 32 * warps, 16 * warps
    n_tiles, n_chunks, o_tiles = kb // 8, kb // 16, dv // 8
    n_group = next(d for d in (4, 3, 2, 1) if o_tiles % d == 0)
    kb_pairs, dv_quads = kb // 2, dv // 8
    # V^T rows hold key pairs in the order the B fragments read them (see vt_col), so one
    # 16-byte load feeds two PV mmas; a row stride of 16 mod 32 words keeps them conflict-free
    vt_stride = kb_pairs + (16 if kb_pairs % 32 == 0 else 0)
    k_units, v_units = kb * QBITS_WORDS // 4, kb_pairs * dv_quads
    k_iters, v_iters = math.ceil(k_units / nthreads), math.ceil(v_units / nthreads)
    mma_pv, cvt_pair = MMA_PV[dtype], CVT_PAIR[dtype]
    neg_inf = T.float32(-math.inf)
    full = T.uint32(0xFFFFFFFF)
    magic_f = T.float32(1.5 * 2.0 ** 23)

    @T.prim_func
    def attention(qbits_h: T.handle, kbits_h: T.handle, kpop_h: T.handle, v_h: T.handle,
                  out_h: T.handle, qscale_h: T.handle, kscale_h: T.handle, bias_h: T.handle,
                  causal: T.int32, ks_group: T.int32, bias_sb: T.int32, bias_sh: T.int32,
                  bias_sq: T.int32, bias_sk: T.int32, mult: T.float32):
        T.func_attr({"global_symbol": attention_name(dtype, dv, has_bias), "tirx.noalias": True})
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Hks = T.int32()
        Nq = T.int32()
        Nk = T.int32()
        Dw = T.int32()
        NB = T.int32()
        Qb = T.match_buffer(qbits_h, (B, Hq, Nq, QBITS_WORDS), "int32")
        Kb = T.match_buffer(kbits_h, (B, Hkv, Nk, QBITS_WORDS), "int32")
        Kp = T.match_buffer(kpop_h, (B, Hkv, Nk), "int32")
        Dq = T.int32()
        V = T.match_buffer(v_h, (B, Hkv, Nk, Dq, 4), "int32")
        O = T.match_buffer(out_h, (B, Hq, Nq, Dw), "int32")
        Sq = T.match_buffer(qscale_h, (B * Hq,), "float32")
        Sk = T.match_buffer(kscale_h, (Hks,), "float32")
        Bias = T.match_buffer(bias_h, (NB,), "float32")
        for bx in T.thread_binding(T.ceildiv(Nq, rows_per_cta), thread="blockIdx.x"):
            for bh in T.thread_binding(B * Hq, thread="blockIdx.y"):
                for tid in T.thread_binding(nthreads, thread="threadIdx.x"):
                    Ks = T.alloc_buffer((kb, QBITS_WORDS), "int32", scope="shared")
                    Kt = T.alloc_buffer((kb,), "int32", scope="shared")
                    Vt = T.alloc_buffer((dv, vt_stride), "uint32", scope="shared")
                    kreg = T.alloc_buffer((k_iters * 4,), "int32", scope="local")
                    vreg = T.alloc_buffer((v_iters * 8,), "int32", scope="local")
                    ktreg = T.alloc_buffer((1,), "int32", scope="local")
                    qa = T.alloc_buffer((4,), "uint32", scope="local")
                    row = T.alloc_buffer((2,), "int32", scope="local")
                    m_i = T.alloc_buffer((2,), "int32", scope="local")
                    m_f = T.alloc_buffer((2,), "float32", scope="local")
                    moff = T.alloc_buffer((2,), "int32", scope="local")
                    alpha = T.alloc_buffer((2,), "float32", scope="local")
                    lsum = T.alloc_buffer((2,), "float32", scope="local")
                    red = T.alloc_buffer((2,), "float32", scope="local")
                    red_i = T.alloc_buffer((2,), "int32", scope="local")
                    acc = T.alloc_buffer((4,), "uint32", scope="local")
                    kf = T.alloc_buffer((2,), "int32", scope="local")
                    vf = T.alloc_buffer((4 * n_group,), "uint32", scope="local")
                    kt = T.alloc_buffer((n_tiles * 2,), "int32", scope="local")
                    ti = T.alloc_buffer((n_tiles * 4,), "int32", scope="local")
                    s = T.alloc_buffer((n_tiles * 4,), "float32", scope="local")
                    pa = T.alloc_buffer((n_chunks * 4,), "uint32", scope="local")
                    o = T.alloc_buffer((o_tiles * 4,), "float32", scope="local")
                    coef = T.alloc_buffer((2,), "float32", scope="local")
                    b = bh // Hq
                    h = bh % Hq
                    hk = h // (Hq // Hkv)
                    lane = tid % 32
                    g = lane // 4
                    t = lane % 4
                    q_first = bx * rows_per_cta
                    q0 = q_first + (tid // 32) * 16
                    coef[0] = T.max(Sq[bh] * Sk[b * (Hks // B) + h // ks_group] * mult * T.float32(2), T.float32(1e-30))
                    # keep 22 significant bits so that 1.5·2**23·coef is exact: then
                    # fma(as_float(MAGIC + i), coef, -1.5·2**23·coef) == i·coef rounded once
                    coef[0] = T.reinterpret("float32", T.reinterpret("int32", coef[0]) & T.int32(-4))
                    coef[1] = -magic_f * coef[0]
                    for r in T.unroll(2):
                        row[r] = q0 + g + 8 * r
                        m_i[r] = MASKED
                        m_f[r] = neg_inf
                        moff[r] = 0
                        lsum[r] = T.float32(0)
                    for i in T.unroll(4):
                        qa[i] = T.if_then_else(row[i % 2] < Nq, T.reinterpret("uint32", Qb[b, h, T.min(row[i % 2], Nq - 1), t + 4 * (i // 2)]), T.uint32(0))
                    for i in T.unroll(o_tiles * 4):
                        o[i] = T.float32(0)
                    kv_len = T.if_then_else(causal != 0, T.min(Nk, q_first + rows_per_cta), Nk)
                    n_blocks = T.ceildiv(kv_len, kb)
                    # prefetch block 0 into registers (16-byte loads)
                    for it in T.unroll(k_iters):
                        u = tid + it * nthreads
                        key = u // 2
                        if u < k_units and key < Nk:
                            kreg[T.ramp(it * 4, 1, 4)] = Kb[b, hk, key, T.ramp((u % 2) * 4, 1, 4)]
                        else:
                            kreg[T.ramp(it * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
                    ktreg[0] = T.if_then_else(tid < kb and tid < Nk, MAGIC - Kp[b, hk, T.min(tid, Nk - 1)], MASKED)
                    for it in T.unroll(v_iters):
                        u = tid + it * nthreads
                        p = u % kb_pairs
                        dq = u // kb_pairs
                        for hh in T.unroll(2):
                            if u < v_units and 2 * p + hh < Nk and dq < Dq:
                                vreg[T.ramp(it * 8 + hh * 4, 1, 4)] = V[b, hk, 2 * p + hh, dq, T.ramp(0, 1, 4)]
                            else:
                                vreg[T.ramp(it * 8 + hh * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
                    for kblk in T.serial(n_blocks):
                        k0 = kblk * kb
                        T.tvm_storage_sync("shared")
                        for it in T.unroll(k_iters):
                            u = tid + it * nthreads
                            if u < k_units:
                                for w in T.unroll(4):
                                    # word order t, t+4 adjacent: one 8-byte load per B fragment
                                    Ks[u // 2, 2 * w + u % 2] = kreg[it * 4 + w]
                        if tid < kb:
                            Kt[tid] = ktreg[0]
                        for it in T.unroll(v_iters):
                            u = tid + it * nthreads
                            if u < v_units:
                                for w in T.unroll(4):
                                    Vt[8 * (u // kb_pairs) + 2 * w, vt_col(u % kb_pairs)] = (T.reinterpret("uint32", vreg[it * 8 + w]) & T.uint32(0xFFFF)) | (T.reinterpret("uint32", vreg[it * 8 + 4 + w]) << T.uint32(16))
                                    Vt[8 * (u // kb_pairs) + 2 * w + 1, vt_col(u % kb_pairs)] = (T.reinterpret("uint32", vreg[it * 8 + w]) >> T.uint32(16)) | (T.reinterpret("uint32", vreg[it * 8 + 4 + w]) & T.uint32(0xFFFF0000))
                        T.tvm_storage_sync("shared")
                        # prefetch the next block while this one computes
                        if kblk + 1 < n_blocks:
                            for it in T.unroll(k_iters):
                                u = tid + it * nthreads
                                key = k0 + kb + u // 2
                                if u < k_units and key < Nk:
                                    kreg[T.ramp(it * 4, 1, 4)] = Kb[b, hk, key, T.ramp((u % 2) * 4, 1, 4)]
                                else:
                                    kreg[T.ramp(it * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
                            ktreg[0] = T.if_then_else(tid < kb and k0 + kb + tid < Nk, MAGIC - Kp[b, hk, T.min(k0 + kb + tid, Nk - 1)], MASKED)
                            for it in T.unroll(v_iters):
                                u = tid + it * nthreads
                                p = u % kb_pairs
                                dq = u // kb_pairs
                                for hh in T.unroll(2):
                                    if u < v_units and k0 + kb + 2 * p + hh < Nk and dq < Dq:
                                        vreg[T.ramp(it * 8 + hh * 4, 1, 4)] = V[b, hk, k0 + kb + 2 * p + hh, dq, T.ramp(0, 1, 4)]
                                    else:
                                        vreg[T.ramp(it * 8 + hh * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
                        # S on the 1-bit tensor cores: t = 2·popc(q&k) − popc(k) + 2**23 as int32 bits
                        for j in T.unroll(n_tiles):
                            kt[T.ramp(j * 2, 1, 2)] = Kt[T.ramp(8 * j + 2 * t, 1, 2)]
                        for j in T.unroll(n_tiles):
                            for e in T.unroll(4):
                                acc[e] = T.uint32(0)
                            kf[T.ramp(0, 1, 2)] = Ks[8 * j + g, T.ramp(2 * t, 1, 2)]
                            T.ptx[MMA_B1](acc[0], acc[1], acc[2], acc[3], qa[0], qa[1], qa[2], qa[3], T.reinterpret("uint32", kf[0]), T.reinterpret("uint32", kf[1]), acc[0], acc[1], acc[2], acc[3])
                            for e in T.unroll(4):
                                ti[j * 4 + e] = T.reinterpret("int32", acc[e]) * 2 + kt[j * 2 + e % 2]
                        if causal != 0 and k0 + kb > q0:  # only blocks that cross the diagonal
                            for j in T.unroll(n_tiles):
                                for e in T.unroll(4):
                                    ti[j * 4 + e] = T.if_then_else(k0 + 8 * j + 2 * t + e % 2 > row[e // 2], MASKED, ti[j * 4 + e])
                        if has_bias:
                            for j in T.unroll(n_tiles):
                                for e in T.unroll(4):
                                    s[j * 4 + e] = T.if_then_else(ti[j * 4 + e] < 0, neg_inf, T.reinterpret("float32", ti[j * 4 + e]) * coef[0] + coef[1] + Bias[b * bias_sb + h * bias_sh + T.min(row[e // 2], Nq - 1) * bias_sq + T.min(k0 + 8 * j + 2 * t + e % 2, Nk - 1) * bias_sk] * T.float32(LOG2E))
                            for r in T.unroll(2):
                                red[r] = neg_inf
                                for j in T.unroll(n_tiles):
                                    red[r] = T.max(red[r], T.max(s[j * 4 + 2 * r], s[j * 4 + 2 * r + 1]))
                                red[r] = T.max(red[r], T.call_extern("float32", "__shfl_xor_sync", full, red[r], 1, 32))
                                red[r] = T.max(red[r], T.call_extern("float32", "__shfl_xor_sync", full, red[r], 2, 32))
                                red[r] = T.max(m_f[r], red[r])
                                T.ptx["ex2.approx.ftz.f32"](alpha[r], T.if_then_else(red[r] == neg_inf, T.float32(0), m_f[r] - red[r]))
                                m_f[r] = red[r]
                                red[r] = T.if_then_else(red[r] == neg_inf, T.float32(0), red[r])
                            for j in T.unroll(n_tiles):
                                for e in T.unroll(4):
                                    T.ptx["ex2.approx.ftz.f32"](s[j * 4 + e], s[j * 4 + e] - red[e // 2])
                        else:
                            for r in T.unroll(2):
                                red_i[r] = m_i[r]
                                for j in T.unroll(n_tiles):
                                    red_i[r] = T.max(red_i[r], T.max(ti[j * 4 + 2 * r], ti[j * 4 + 2 * r + 1]))
                                red_i[r] = T.max(red_i[r], T.call_extern("int32", "__shfl_xor_sync", full, red_i[r], 1, 32))
                                red_i[r] = T.max(red_i[r], T.call_extern("int32", "__shfl_xor_sync", full, red_i[r], 2, 32))
                                red[r] = T.if_then_else(red_i[r] >= 0, (T.reinterpret("float32", red_i[r]) - magic_f) * coef[0], neg_inf)
                                T.ptx["ex2.approx.ftz.f32"](alpha[r], T.if_then_else(red_i[r] >= 0, m_f[r] - red[r], T.float32(0)))
                                m_f[r] = red[r]
                                m_i[r] = red_i[r]
                                moff[r] = T.if_then_else(red_i[r] >= 0, MAGIC - red_i[r], 0)
                            for j in T.unroll(n_tiles):
                                for e in T.unroll(4):
                                    T.ptx["ex2.approx.ftz.f32"](s[j * 4 + e], T.reinterpret("float32", ti[j * 4 + e] + moff[e // 2]) * coef[0] + coef[1])
                        for r in T.unroll(2):
                            red[r] = T.float32(0)
                        for j in T.unroll(n_tiles):
                            for e in T.unroll(4):
                                red[e // 2] = red[e // 2] + s[j * 4 + e]
                        for r in T.unroll(2):
                            lsum[r] = lsum[r] * alpha[r] + red[r]
                        for i in T.unroll(o_tiles * 4):
                            o[i] = o[i] * alpha[(i % 4) // 2]
                        # P (registers, 16-bit) @ V (shared, transposed pairs) on the 16-bit tensor cores
                        for c in T.unroll(n_chunks):
                            for i in T.unroll(4):
                                T.ptx[cvt_pair](pa[c * 4 + i], s[(2 * c + i // 2) * 4 + 2 * (i % 2) + 1], s[(2 * c + i // 2) * 4 + 2 * (i % 2)])
                        # groups of n-tiles so that back-to-back mmas use different accumulators
                        for cc in T.unroll(n_chunks // 2):
                            for ng in T.unroll(o_tiles // n_group):
                                for i in T.unroll(n_group):
                                    vf[T.ramp(4 * i, 1, 4)] = Vt[8 * (ng * n_group + i) + g, T.ramp(16 * cc + 4 * t, 1, 4)]
                                for c2 in T.unroll(2):
                                    for i in T.unroll(n_group):
                                        T.ptx[mma_pv](o[(ng * n_group + i) * 4], o[(ng * n_group + i) * 4 + 1], o[(ng * n_group + i) * 4 + 2], o[(ng * n_group + i) * 4 + 3], pa[(2 * cc + c2) * 4], pa[(2 * cc + c2) * 4 + 1], pa[(2 * cc + c2) * 4 + 2], pa[(2 * cc + c2) * 4 + 3], vf[4 * i + 2 * c2], vf[4 * i + 2 * c2 + 1], o[(ng * n_group + i) * 4], o[(ng * n_group + i) * 4 + 1], o[(ng * n_group + i) * 4 + 2], o[(ng * n_group + i) * 4 + 3])
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
