"""TVMScript (TIRx) source of binattn's fused binary flash-attention forward for CUDA.

What it does: ``attention_func(dtype, dv, schedule)`` returns a PrimFunc that computes, for every
(b, h) and query row, ``softmax(s_q·s_k·scale·(b_q·b_kᵀ) + bias) · V`` in one pass over the
keys (FlashAttention-2 style, no N×N tensor):

* K bits, key popcounts and V of the key block ``stages − 1`` ahead are copied to shared memory
  with ``cp.async`` while the current block computes;
* QKᵀ runs on the 1-bit tensor cores: one ``mma.sync.m16n8k256.b1.and.popc`` per 16×8 score
  tile (D ≤ 256 fits one 256-bit chunk), whose accumulator input makes the result the float bits
  of the score (AND identity, see :func:`attention_func`);
* softmax in fp32 in the log2 domain: without any running max when the scale keeps a row's
  exponent range small enough, otherwise online (one running max per row, warp shuffles);
* P is rounded to fp16/bf16 in registers and reused directly as the A fragment of the PV mma
  (``mma.sync.m16n8k16`` with ``ldmatrix.trans`` V fragments, or a warpgroup ``wgmma`` on
  sm_90a); the row sums come from the same mma (a tile of ones);
* optional additive bias (any broadcast strides; the host folds masks into it), causal
  masking with early exit, GQA (kv head = h // group), rows with no visible key give 0.

Each CTA holds ``schedule.warps`` warps × 16 × ``row_tiles`` query rows of one (b, h); each step
stages ``schedule.key_block`` keys in shared memory. The knobs are in
``binattn.schedules.cuda.attention``.

What it does not: pack signs or compute the scales (``cuda_sign_pack``), build or load the
module (``cuda_build`` / ``cuda_dispatch``), 8-bit P/V, top-N, soft binarizers, backward.
Those run the reference through the dispatcher's fallback.
"""
from __future__ import annotations

import math
from dataclasses import replace

import tvm
from tvm.script import tirx as T

from ...schedules.cuda.attention import SCORE_MAGIC, CudaAttentionSchedule

LOG2E = 1.4426950408889634
QBITS_WORDS = 8  # tensor-core layout: every row padded to one 256-bit K chunk
MMA_PV = {"float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
          "bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"}
CVT_PAIR = {"float16": "cvt.rn.f16x2.f32", "bfloat16": "cvt.rn.bf16x2.f32"}
MMA_B1 = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc"


def attention_name(dtype: str, dv: int, has_bias: bool = False, short: bool = False,
                   table: bool = False) -> str:
    """Exported symbol of the attention kernel for (dtype, padded value head size, no bias /
    dense bias / bias table, the short-sequence schedule or the regular one)."""
    kind = "_table" if table else "_bias" if has_bias else ""
    return f"binattn_attention_{dtype}_dv{dv}{kind}{'_short' if short else ''}"


MAGIC = SCORE_MAGIC  # float bits of 1.5·2**23 (see binattn.schedules.cuda.attention)
MASKED = -16777216  # 0xFF000000: negative as int32, about -1.7e38 as float32
MAGIC_FLOAT = 1.5 * 2.0 ** 23  # as_float(SCORE_MAGIC): the score bits' offset, as a float


EXP2_POLY = (0.9999280708313842, 0.6932609977919704, 0.24261117167503404, 0.05517162704802993)
"""2**f on [−0.5, 0.5], degree 3 (relative error 7.5e-5: below bf16/fp16 rounding of P)."""
SHARED_LIMIT = 48 * 1024  # static shared memory per CTA without opting in
ETAB_SIZE = 2 * 256 + 2  # exp table: scores −D..D for D ≤ 256, and the masked-key 0
#: bias-table rows a ``table`` kernel keeps in shared memory: at most TABLE_MAX_ROWS (a 31×31
#: token grid's relative-position table has 3724), at least TABLE_MIN_ROWS (fewer stages else)
TABLE_MAX_ROWS, TABLE_MIN_ROWS = 4096, 2048
TABLE_RESERVE = 256  # bytes beside the table: the per-warp partials of its range, alignment
#: largest exponent range (log2) a row may span for the softmax without a running max, per P
#: dtype: scores lie in [−D, D], so p = 2**(s·coef) stays within 2**±(range/2) — bf16 keeps
#: fp32's exponent range, fp16 P must stay inside [2**-14, 65504]
STATIC_RANGE = {"bfloat16": 100.0, "float16": 24.0}
ONES_PAIR = {"bfloat16": 0x3F803F80, "float16": 0x3C003C00}  # two 16-bit 1.0s


def v_stage_words(dv: int, schedule: CudaAttentionSchedule) -> int:
    """32-bit words of one stage of V in shared memory: rows of keys padded to an odd number of
    16-byte groups (ldmatrix path), or with ``wgmma_pv`` group-major — per 8 columns, all keys
    of the block, one 16-byte row each, then a group of ones (the row sums), every group padded
    by one row (the cp.async stores of 8 consecutive groups then hit distinct banks)."""
    kb, groups = schedule.key_block, dv // 8
    if schedule.wgmma_pv:
        return (groups + 1) * (kb + 1) * 4
    return kb * (groups | 1) * 4


def shared_bytes(dv: int, schedule: CudaAttentionSchedule, bias_rows: int = 0) -> int:
    """Shared memory of one CTA: ``stages`` key blocks of K bits (32 B/key), key popcounts (twice:
    8 B/key) and V (see :func:`v_stage_words`), plus the exp table with ``exp_table`` and
    ``bias_rows`` float32 rows of one head's bias-table column."""
    table = 4 * ETAB_SIZE if schedule.exp_table else 0
    bias_table = 4 * bias_rows + TABLE_RESERVE if bias_rows else 0
    return (schedule.stages * (schedule.key_block * 40 + 4 * v_stage_words(dv, schedule)) + table
            + bias_table)


def table_rows(dv: int, schedule: CudaAttentionSchedule) -> int:
    """Rows of a bias table the ``table`` kernel holds in shared memory (one head's column):
    what is left of ``SHARED_LIMIT`` after the schedule's buffers, in whole 256s, at most
    ``TABLE_MAX_ROWS``. Larger tables are gathered on the host and take the dense-bias kernel."""
    free = (SHARED_LIMIT - shared_bytes(dv, schedule) - TABLE_RESERVE) // 4
    return min(TABLE_MAX_ROWS, free // 256 * 256)


def table_schedule(dv: int, schedule: CudaAttentionSchedule) -> CudaAttentionSchedule:
    """The schedule of the ``table`` kernel: the given one, or — where it leaves fewer than
    ``TABLE_MIN_ROWS`` rows of shared memory — the same with two pipeline stages."""
    if table_rows(dv, schedule) >= TABLE_MIN_ROWS or schedule.stages <= 2:
        return schedule
    return replace(schedule, stages=2, wgmma_pv=0)


def regs(buf, base, n: int = 4) -> list:
    """``[buf[base], buf[base + 1], …]``: the ``n`` registers of one mma fragment, for a kernel's
    ``T.ptx[...](*regs(...), ...)`` (evaluated in Python while the TVMScript is parsed: the same
    buffer loads as when written out one by one)."""
    return [buf[base]] + [buf[base + i] for i in range(1, n)]


def regs_u32(buf, base, n: int = 4) -> list:
    """:func:`regs` reinterpreted as uint32 (the operand type of the b1 mma)."""
    return [T.reinterpret("uint32", x) for x in regs(buf, base, n)]


@T.macro
def score_coefficient(coef, Sq, Sk, B, Hks, bh, b, h, ks_group, mult):
    """Prologue of both attention kernels: the score coefficient ``coef[0]`` (scales × ``mult``
    × 2) of this (b, h) and ``coef[1]``, its magic-number offset."""
    coef[0] = Sq[bh] * Sk[b * (Hks // B) + h // ks_group] * mult * T.float32(2)
    # at least 1e-30; a NaN or Inf scale (a non-finite q or k) becomes NaN, so that
    # every score and the output of this (b, h) are NaN (reference.nan_unless_finite)
    coef[0] = T.if_then_else(coef[0] < T.float32(1e-30), T.float32(1e-30),
                             T.if_then_else(coef[0] <= T.float32(3.0e38), coef[0],
                                            T.float32(math.nan)))
    # keep 22 significant bits so that 1.5·2**23·coef is exact: then
    # fma(as_float(MAGIC + i), coef, -1.5·2**23·coef) == i·coef rounded once
    coef[0] = T.reinterpret("float32", T.reinterpret("int32", coef[0]) & T.int32(-4))
    coef[1] = -T.float32(MAGIC_FLOAT) * coef[0]


def bias_table_prologue(rows: int, nthreads: int, warps: int):
    """The T.macro that copies one head's column of a bias table into shared memory (the
    ``table`` kernels of ``attention_func`` and ``attention_pv8_func``): rows = what the flat
    span ``bias[NB]`` holds (at most ``rows``), every load issued before any use; the column's
    max and min, CTA-wide, into ``trange``; then the column into ``tab`` in the log2 domain
    minus the range's midpoint (softmax is shift-invariant), so that when the scores' span
    plus ``trange[0] − trange[1]`` fits, the no-shift softmax applies as without a bias. The
    caller's first main-loop barrier orders these stores before any lookup."""
    neg_inf = T.float32(-math.inf)
    full = T.uint32(0xFFFFFFFF)

    @T.macro
    def prologue(tab, tred, tval, trange, trow, Bias, NB, Hq, bias_sb, bias_sh, h, tid, lane):
        trow[0] = T.min((NB - 1 - T.if_then_else(bias_sh != 0, (Hq - 1) * bias_sh, 0))
                        // T.max(bias_sb, 1) + 1, rows)
        trange[0] = neg_inf
        trange[1] = -neg_inf
        for it in T.unroll(rows // nthreads):
            tval[it] = T.if_then_else(tid + it * nthreads < trow[0],
                                      Bias[(tid + it * nthreads) * bias_sb + h * bias_sh],
                                      T.float32(0))
        for it in T.unroll(rows // nthreads):
            if tid + it * nthreads < trow[0]:
                trange[0] = T.max(trange[0], tval[it])
                trange[1] = T.min(trange[1], tval[it])
        for sh in T.unroll(5):
            trange[0] = T.max(trange[0], T.call_extern("float32", "__shfl_xor_sync", full,
                                                       trange[0], 16 >> sh, 32))
            trange[1] = T.min(trange[1], T.call_extern("float32", "__shfl_xor_sync", full,
                                                       trange[1], 16 >> sh, 32))
        if lane == 0:
            tred[tid // 32] = trange[0]
            tred[warps + tid // 32] = trange[1]
        T.tvm_storage_sync("shared")
        for w in T.unroll(warps):
            trange[0] = T.max(trange[0], tred[w])
            trange[1] = T.min(trange[1], tred[warps + w])
        for it in T.unroll(rows // nthreads):
            tab[tid + it * nthreads] = ((tval[it] - (trange[0] + trange[1]) * T.float32(0.5))
                                        * T.float32(LOG2E))

    return prologue


def attention_func(dtype: str, dv: int, schedule: CudaAttentionSchedule,
                   has_bias: bool = False, table: bool = False) -> tvm.tirx.PrimFunc:
    """The attention PrimFunc for ``dtype`` (float16|bfloat16) and padded value head size ``dv``.

    Arguments of the generated function (torch tensors through DLPack, all contiguous):
    ``qbits int32[B,Hq,Nq,8]``, ``kbits int32[B,Hkv,Nk,8]``, ``kpop int32[B,Hkv,Nk]``,
    ``v32 int32[B,Hkv,Nk,Dv/8,4]`` (v viewed as 16-bit pairs, 16-byte groups; Dv % 8 == 0),
    ``out32 int32[B,Hq,Nq,Dv/2]``, ``qscale f32[B*Hq]``, ``kscale f32[B*Hks]``,
    ``bias f32[nbias]`` (flat; indexed with the strides below; ignored without ``has_bias``),
    ``index int32[nindex]`` (flat; read by ``table`` kernels only), then scalars ``causal,
    ks_group, bias_sb, bias_sh, bias_sq, bias_sk``, ``mult`` (the rest of the score
    coefficient, times log2 e) and ``d_bits`` (the q/k head size D).

    Bias: ``has_bias`` reads ``bias[b·sb + h·sh + i·sq + j·sk]`` per score (any broadcast or
    view). ``table`` (a relative-position table, implies a bias) reads
    ``tab[index[i·sq + j·sk]]``, where each CTA first copies its head's column of the table
    (``bias[r·sb + h·sh]``, every row r whose element lies inside ``bias``; at most
    :func:`table_rows` rows) into shared memory: one index load per score instead of a dense
    [H, N, N] bias, and the lookups of one warp hit a few consecutive shared words. The copy is
    stored in the log2 domain minus the midpoint of the column's range (a CTA-wide max/min
    first), so when the scores' span ``2·D·coef`` plus the table's span fits
    ``STATIC_RANGE`` the no-shift softmax runs as without a bias.

    Scores: the AND identity ``4·popc(a&c) − 2·popc(a) − 2·popc(c) + D`` minus its per-row
    constant ``D − 2·popc(a)`` (softmax is invariant to it) is ``2·s`` with
    ``s = 2·popc(a&c) − popc(c)`` in [−D, D]. The b1 mma produces ``t = 2·popc(a&c) + C`` with
    the accumulator input ``C = SCORE_MAGIC − popc(c)`` (the form the sign-pack writes the key
    popcounts in; stored twice per key pair in shared memory so one 16-byte load is the C
    fragment), so ``as_float(t) = 1.5·2**23 + s`` exactly: no integer arithmetic and no int→float
    conversion per score. For D ≤ 128 the q and k words are duplicated into the unused upper
    half of the 256-bit K chunk (the copy reads the low half twice), which doubles the popcount
    for free; wider heads run the mma twice. The 32-bit words are permuted (logical word t ↔
    physical 2t, t + 4 ↔ 2t + 1, the same for q and k) so one 8-byte load is the B fragment.
    Keys past the end or the causal diagonal get ``MASKED`` (a negative int).

    Softmax: when the row's whole exponent range ``2·D·coef`` fits ``STATIC_RANGE`` and there is
    no bias (or a bias table whose span fits with it), ``p = 2**(s·coef)`` needs no shift at
    all (no running max, no shuffles, no rescaling); otherwise the kernel runs the online
    softmax (integer running max without bias, float with it). The row sums come from the
    tensor cores: P times a tile of ones is one more PV mma, so they are the sums of the very P
    (16-bit) that multiplies V.

    Stages (``T.macro``, expanded in place): prologue (:func:`score_coefficient`, ``softmax_mode``,
    the bias table's ``table_prologue``, ``query_rows``, ``copy_offsets``); per key block the load
    stage (``copy_full_block`` / ``copy_last_block``, ``advance_copy_bases``), QKᵀ (``qk_scores``),
    softmax per row tile (``bias_scores``, ``float_running_max``, ``unshifted_scores`` or
    ``int_running_max``, then ``exp2_scores``, ``pack_p``), P·V (``pv_wgmma`` / ``pv_mma``); then
    ``epilogue``.

    Data movement (FlashAttention-2 structure): K bits, key popcounts and V rows of the key
    block ``stages − 1`` ahead are copied global → shared with ``cp.async`` while the current
    block computes, one barrier per block. A full block (every key < Nk, V rows exactly dv wide)
    is copied from one global and one shared offset per tensor, carried from block to block in
    registers, the unrolled copies differing by constants (28 instructions per block for dv 64
    on sm_90a instead of ~130 with per-copy clamping); the last block clamps and zero-fills;
    V stays in its natural [key, dv] layout (rows padded to an odd number of 16-byte
    groups: conflict-free) and ``ldmatrix.trans`` turns it into the B fragments of the 16-bit PV
    mma. ``schedule.poly_quarters`` quarters of each block's exps run as a
    degree-3 polynomial on the FMA pipe instead of the MUFU ``ex2`` unit (FlashAttention-4's
    trick), so both units share the exponentials; ``schedule.exp_table`` makes the no-shift
    softmax read ``2**(s·coef)`` from a shared table of the 2D+1 possible scores instead.
    """
    schedule.check()
    has_bias = has_bias or table
    trows = table_rows(dv, schedule) if table else 1
    if table and trows < TABLE_MIN_ROWS:
        raise ValueError(f"schedule {schedule} leaves room for {trows} bias table rows at dv={dv}"
                         f", fewer than {TABLE_MIN_ROWS} (table_schedule picks one that fits)")
    if dtype not in MMA_PV or dv % 8 or not 8 <= dv <= 256:
        raise ValueError(f"no attention kernel for dtype={dtype!r}, dv={dv}")
    if schedule.wgmma_pv and dv + 8 > 256:
        raise ValueError(f"wgmma_pv needs dv + 8 <= 256 (the row-sum columns), got dv={dv}")
    if shared_bytes(dv, schedule) > SHARED_LIMIT:
        raise ValueError(f"schedule {schedule} needs {shared_bytes(dv, schedule)} B of shared "
                         f"memory for dv={dv} (limit {SHARED_LIMIT}); use a smaller key_block")
    warps, kb, stages, mt_n = (schedule.warps, schedule.key_block, schedule.stages,
                               schedule.row_tiles)
    nthreads, rows_per_warp = 32 * warps, 16 * mt_n
    rows_per_cta = rows_per_warp * warps
    n_tiles, n_chunks, o_tiles = kb // 8, kb // 16, dv // 8
    n_poly = n_tiles * schedule.poly_quarters // 4
    groups = dv // 8
    # 16-byte groups per shared V row: odd → ldmatrix rows hit distinct banks
    vstride = groups | 1
    wg = bool(schedule.wgmma_pv)
    etab_on = bool(schedule.exp_table)
    # blocks copied ahead of the one computing; with wgmma one stage more is kept back, as the
    # previous block's asynchronous P·V may still read its V stage
    ahead = stages - 1 - int(wg)
    if ahead < 1:
        raise ValueError("wgmma_pv needs stages >= 3 (one stage stays with the running wgmma)")
    vwords = v_stage_words(dv, schedule)
    # the shared V offsets of a thread's copies differ by constants when groups divides nthreads
    v_dst_const = nthreads % groups == 0 and not wg
    # ... and so do the global ones (a row stride apart), whatever V's row stride
    v_src_const = nthreads % groups == 0
    ab = "bf16" if dtype == "bfloat16" else "f16"
    wgmma_pv = f"wgmma.mma_async.sync.aligned.m64n{dv + 8}k16.f32.{ab}.{ab}"
    ones_iters = math.ceil(stages * kb * 4 / nthreads)
    k_units, v_units = kb * 2, kb * groups
    k_iters, v_iters, p_iters = (math.ceil(k_units / nthreads), math.ceil(v_units / nthreads),
                                 math.ceil(2 * kb / nthreads))
    mma_pv, cvt_pair = MMA_PV[dtype], CVT_PAIR[dtype]
    table_prologue = bias_table_prologue(trows, nthreads, warps)
    static_range = T.float32(STATIC_RANGE[dtype])
    ones = T.uint32(ONES_PAIR[dtype])
    ot = o_tiles * 4 + 4  # accumulators of one row tile: the output tiles, then the row-sum tile
    so = o_tiles * 4
    st_n, sc_n = n_tiles * 4, n_chunks * 4  # scores / P fragments of one row tile
    neg_inf = T.float32(-math.inf)
    full = T.uint32(0xFFFFFFFF)
    magic_f = T.float32(MAGIC_FLOAT)
    masked_u = T.uint32(MASKED & 0xFFFFFFFF)
    c0, c1, c2, c3 = (T.float32(c) for c in EXP2_POLY)
    ld_x4 = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"
    ld_x2 = "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16"

    @T.macro
    def softmax_mode(coef, mode, etab, xr, d_bits, tid):
        """Prologue: the softmax mode (``mode[0]``: no shift needed; ``mode[1]``: narrow heads,
        D ≤ 128) and, with ``exp_table``, the shared table of ``2**(s·coef)``."""
        mode[1] = T.Cast("int32", d_bits <= 128)
        if has_bias:
            mode[0] = 0
        else:
            mode[0] = T.Cast("int32",
                             coef[0] * T.Cast("float32", 2 * d_bits) <= static_range)
        if etab_on:  # read after the main loop's first barrier
            for it in T.serial(T.ceildiv(2 * d_bits + 2, nthreads)):
                if tid + it * nthreads < 2 * d_bits + 2:
                    T.ptx["ex2.approx.ftz.f32"](
                        xr[0], T.Cast("float32", tid + it * nthreads - d_bits) * coef[0])
                    etab[tid + it * nthreads] = T.if_then_else(
                        tid + it * nthreads <= 2 * d_bits, xr[0], T.float32(0))

    @T.macro
    def query_rows(row, lim, m_i, m_f, moff, qa, Qb, mode, b, h, q0, g, t, causal, Nq, Nk):
        """Prologue: this thread's query rows, their key limits (causal), the running maxima
        reset, and the rows' q bits as A fragments of the b1 mma (zeros past Nq)."""
        for rr in T.unroll(2 * mt_n):
            row[rr] = q0 + 16 * (rr // 2) + g + 8 * (rr % 2)
            lim[rr] = T.if_then_else(causal != 0, T.min(Nk, row[rr] + 1), Nk)
            m_i[rr] = MASKED
            m_f[rr] = neg_inf
            moff[rr] = 0
        for mt in T.unroll(mt_n):
            for i in T.unroll(4):
                # logical word t / t+4 = physical 2t / 2t+1 (narrow: the low half twice)
                qa[mt * 4 + i] = T.if_then_else(
                    row[mt * 2 + i % 2] < Nq,
                    T.reinterpret("uint32", Qb[b, h, T.min(row[mt * 2 + i % 2], Nq - 1),
                                               (2 * t + i // 2) % (8 - 4 * mode[1])]),
                    T.uint32(0))

    @T.macro
    def copy_offsets(k_src, k_dst, p_dst, v_src, v_dst, fast_src, fast_dst, Vs, tid, kv_row0,
                     v_row0, vsn, Dq, mode):
        """Prologue of the load stage: each thread's global/shared offsets of its K, key
        popcount and V copies, the bases of the full-block copies and (``wgmma_pv``) the
        ones group of every V stage."""
        for it in T.unroll(k_iters):
            u = tid + it * nthreads
            k_src[it] = kv_row0 * QBITS_WORDS + (u % 2) * 4 * (1 - mode[1])
            k_dst[it] = u * 4
        for it in T.unroll(p_iters):
            u = tid + it * nthreads
            p_dst[it] = ((u // 2) // 2) * 4 + 2 * (u % 2) + (u // 2) % 2
        for it in T.unroll(v_iters):
            u = tid + it * nthreads
            v_src[it] = v_row0 + T.min(u % groups, Dq - 1) * 4
            if wg:
                v_dst[it] = ((u % groups) * (kb + 1) + u // groups) * 4
            else:
                v_dst[it] = ((u // groups) * vstride + u % groups) * 4
        if wg:
            # the ones group (row sums through the same wgmma), every stage
            for it in T.unroll(ones_iters):
                u = tid + it * nthreads
                if u < stages * kb * 4:
                    Vs[u // (kb * 4),
                       (groups * (kb + 1) + (u % (kb * 4)) // 4) * 4 + u % 4] = T.reinterpret(
                           "int32", ones)
        # bases of the full-block copies: K (16-byte halves), key popcounts, V (a
        # full block of full-width V rows is contiguous: unit u is 16-byte group u)
        fast_src[0] = k_src[0] + (tid // 2) * QBITS_WORDS
        fast_src[1] = kv_row0 + tid // 2
        fast_src[2] = v_row0 + (tid // groups) * vsn + (tid % groups) * 4
        fast_dst[0] = k_dst[0]
        fast_dst[1] = p_dst[0]
        fast_dst[2] = v_dst[0]

    @T.macro
    def copy_full_block(pre, Ks, Kps, Vs, Kb, Kp, V, fast_src, fast_dst, v_src, v_dst, tid,
                        vsn):
        """Load stage, a full block of full-width V rows: no clamping, no zero-fill (one base
        per tensor, advanced by a block each step, so that it stays in a register; the
        unrolled copies differ by constants)."""
        for it in T.unroll(k_iters):
            if tid + it * nthreads < k_units:
                T.ptx["cp.async.cg.shared.global"](
                    Ks.ptr_to([0, 0, fast_dst[0] + it * nthreads * 4]),
                    Kb.ptr_to([0, 0, 0, fast_src[0] + it * (nthreads // 2) * QBITS_WORDS]),
                    16, 16)
        for it in T.unroll(p_iters):
            if tid + it * nthreads < 2 * kb:
                T.ptx["cp.async.ca.shared.global"](
                    Kps.ptr_to([0, 0, fast_dst[1] + it * nthreads]),
                    Kp.ptr_to([0, 0, fast_src[1] + it * (nthreads // 2)]), 4, 4)
        for it in T.unroll(v_iters):
            if tid + it * nthreads < v_units:
                T.ptx["cp.async.cg.shared.global"](
                    Vs.ptr_to([0, (fast_dst[2] + it * (nthreads // groups) * vstride * 4
                                   if v_dst_const else v_dst[it] + (pre % stages) * vwords)]),
                    V.ptr_to([0, 0, 0, 0, (fast_src[2] + it * (nthreads // groups) * vsn
                                           if v_src_const else
                                           v_src[it] + (pre * kb + (tid + it * nthreads)
                                                        // groups) * vsn)]),
                    16, 16)

    @T.macro
    def copy_last_block(pre, Ks, Kps, Vs, Kb, Kp, V, k_src, k_dst, p_dst, v_src, v_dst, tid,
                        kv_row0, Nk, Dq, vsn):
        """Load stage, the last block (keys past Nk zero-filled) or V narrower than dv: every
        copy clamps its key and zero-fills what lies outside."""
        for it in T.unroll(k_iters):
            u = tid + it * nthreads
            key = pre * kb + u // 2
            if u < k_units:
                T.ptx["cp.async.cg.shared.global"](
                    Ks.ptr_to([0, 0, k_dst[it] + (pre % stages) * (kb * QBITS_WORDS)]),
                    Kb.ptr_to([0, 0, 0, k_src[it] + T.min(key, Nk - 1) * QBITS_WORDS]),
                    16, T.Cast("uint32", T.if_then_else(key < Nk, 16, 0)))
        for it in T.unroll(p_iters):
            u = tid + it * nthreads
            key = pre * kb + u // 2
            if u < 2 * kb:
                T.ptx["cp.async.ca.shared.global"](
                    Kps.ptr_to([0, 0, p_dst[it] + (pre % stages) * (kb * 2)]),
                    Kp.ptr_to([0, 0, kv_row0 + T.min(key, Nk - 1)]),
                    4, T.Cast("uint32", T.if_then_else(key < Nk, 4, 0)))
        for it in T.unroll(v_iters):
            u = tid + it * nthreads
            key = pre * kb + u // groups
            if u < v_units:
                T.ptx["cp.async.cg.shared.global"](
                    Vs.ptr_to([0, v_dst[it] + (pre % stages) * vwords]),
                    V.ptr_to([0, 0, 0, 0, v_src[it] + T.min(key, Nk - 1) * vsn]),
                    16, T.Cast("uint32", T.if_then_else(key < Nk and u % groups < Dq, 16, 0)))

    @T.macro
    def advance_copy_bases(pre, fast_src, fast_dst, vsn):
        """Load stage: move the full-block bases on by one block (global) and to the next
        stage, wrapping after the last one (shared)."""
        fast_src[0] = fast_src[0] + kb * QBITS_WORDS
        fast_src[1] = fast_src[1] + kb
        fast_src[2] = fast_src[2] + kb * vsn
        # the next stage, wrapping after the last one
        fast_dst[0] = fast_dst[0] + T.if_then_else(pre % stages == stages - 1,
                                                   (1 - stages) * (kb * QBITS_WORDS),
                                                   kb * QBITS_WORDS)
        fast_dst[1] = fast_dst[1] + T.if_then_else(pre % stages == stages - 1,
                                                   (1 - stages) * (kb * 2), kb * 2)
        fast_dst[2] = fast_dst[2] + T.if_then_else(pre % stages == stages - 1,
                                                   (1 - stages) * vwords, vwords)

    @T.macro
    def qk_scores(st, k0, tu, cst, kf, acc, qa, Ks, Kps, lim, mode, g, t, warp_lim):
        """QKᵀ: the scores of the block in shared stage ``st`` (first key ``k0``) on the 1-bit
        tensor cores, as float bits ``MAGIC + s`` in ``tu``; keys past Nk or the causal
        diagonal get ``MASKED``."""
        # C fragments: (SCORE_MAGIC − popc) of keys 8j+2t, 8j+2t+1, twice
        for j in T.unroll(n_tiles):
            cst[T.ramp(j * 4, 1, 4)] = Kps[st, 4 * j + t, T.ramp(0, 1, 4)]
        # t = 2·popc(q&k) + MAGIC − popc(k) on the 1-bit tensor cores
        if mode[1] != 0:
            for j in T.unroll(n_tiles):
                kf[T.ramp(0, 1, 2)] = Ks[st, 8 * j + g, T.ramp(2 * t, 1, 2)]
                for mt in T.unroll(mt_n):
                    T.ptx[MMA_B1](*regs(tu, mt * st_n + j * 4), *regs(qa, mt * 4),
                                  *regs_u32(kf, 0, 2), *regs_u32(cst, j * 4))
        else:  # D > 128: two mmas, the first one's result is the second one's C
            for j in T.unroll(n_tiles):
                kf[T.ramp(0, 1, 2)] = Ks[st, 8 * j + g, T.ramp(2 * t, 1, 2)]
                for mt in T.unroll(mt_n):
                    T.ptx[MMA_B1](*regs(acc, 0), *regs(qa, mt * 4), *regs_u32(kf, 0, 2),
                                  *regs_u32(cst, j * 4))
                    T.ptx[MMA_B1](*regs(tu, mt * st_n + j * 4), *regs(qa, mt * 4),
                                  *regs_u32(kf, 0, 2), *regs(acc, 0))
        if k0 + kb > warp_lim:  # blocks that cross Nk or the causal diagonal
            for mt in T.unroll(mt_n):
                for j in T.unroll(n_tiles):
                    for e in T.unroll(4):
                        tu[mt * st_n + j * 4 + e] = T.if_then_else(
                            k0 + 8 * j + 2 * t + e % 2 >= lim[mt * 2 + e // 2], masked_u,
                            tu[mt * st_n + j * 4 + e])

    @T.macro
    def bias_scores(mt, s, bv, tu, tab, Idx, Bias, row, coef, b, h, k0, t, bias_sb, bias_sh,
                    bias_sq, bias_sk, Nq, Nk):
        """Softmax with a bias, row tile ``mt``: every bias of the tile first (clamped
        indices, always in bounds: straight-line loads the compiler can overlap, instead of
        one load per masked-key branch), then the scores in the log2 domain plus the bias
        (masked keys: −inf)."""
        for j in T.unroll(n_tiles):
            for e in T.unroll(4):
                if table:
                    bv[j * 4 + e] = tab[Idx[T.min(row[mt * 2 + e // 2], Nq - 1) * bias_sq
                                            + T.min(k0 + 8 * j + 2 * t + e % 2, Nk - 1)
                                            * bias_sk]]
                else:
                    bv[j * 4 + e] = Bias[b * bias_sb + h * bias_sh
                                         + T.min(row[mt * 2 + e // 2], Nq - 1) * bias_sq
                                         + T.min(k0 + 8 * j + 2 * t + e % 2, Nk - 1)
                                         * bias_sk] * T.float32(LOG2E)
        for j in T.unroll(n_tiles):
            for e in T.unroll(4):
                s[mt * st_n + j * 4 + e] = T.if_then_else(
                    T.reinterpret("int32", tu[mt * st_n + j * 4 + e]) < 0, neg_inf,
                    T.reinterpret("float32", tu[mt * st_n + j * 4 + e]) * coef[0] + coef[1]
                    + bv[j * 4 + e])

    @T.macro
    def float_running_max(mt, s, red, alpha, m_f, o):
        """Online softmax on float scores (with a bias), row tile ``mt``: the new running
        max per row (warp shuffles across the 4 threads of a row), the scores shifted by it,
        and the accumulators rescaled by ``2**(old max − new max)``."""
        for r in T.unroll(2):
            red[mt * 2 + r] = neg_inf
            for j in T.unroll(n_tiles):
                red[mt * 2 + r] = T.max(red[mt * 2 + r], T.max(s[mt * st_n + j * 4 + 2 * r],
                                                               s[mt * st_n + j * 4 + 2 * r + 1]))
            red[mt * 2 + r] = T.max(red[mt * 2 + r], T.call_extern(
                "float32", "__shfl_xor_sync", full, red[mt * 2 + r], 1, 32))
            red[mt * 2 + r] = T.max(red[mt * 2 + r], T.call_extern(
                "float32", "__shfl_xor_sync", full, red[mt * 2 + r], 2, 32))
            red[mt * 2 + r] = T.max(m_f[mt * 2 + r], red[mt * 2 + r])
            T.ptx["ex2.approx.ftz.f32"](alpha[mt * 2 + r], T.if_then_else(
                red[mt * 2 + r] == neg_inf, T.float32(0), m_f[mt * 2 + r] - red[mt * 2 + r]))
            m_f[mt * 2 + r] = red[mt * 2 + r]
            red[mt * 2 + r] = T.if_then_else(red[mt * 2 + r] == neg_inf, T.float32(0),
                                             red[mt * 2 + r])
        for j in T.unroll(n_tiles):
            for e in T.unroll(4):
                s[mt * st_n + j * 4 + e] = s[mt * st_n + j * 4 + e] - red[mt * 2 + e // 2]
        for i in T.unroll(ot):
            o[mt * ot + i] = o[mt * ot + i] * alpha[mt * 2 + (i % 4) // 2]

    @T.macro
    def unshifted_scores(mt, s, tu, etab, coef, d_bits):
        """Softmax without a shift, row tile ``mt`` (|s·coef| ≤ STATIC_RANGE / 2 is known to
        fit): with ``exp_table`` p straight from the table (masked keys: its 0), else the
        exponent ``s·coef``."""
        if etab_on:
            for j in T.unroll(n_tiles):
                for e in T.unroll(4):
                    s[mt * st_n + j * 4 + e] = etab[T.Cast("int32", T.min(
                        tu[mt * st_n + j * 4 + e] - T.Cast("uint32", MAGIC - d_bits),
                        T.Cast("uint32", 2 * d_bits + 1)))]
        else:
            for j in T.unroll(n_tiles):
                for e in T.unroll(4):
                    s[mt * st_n + j * 4 + e] = (T.reinterpret("float32", tu[mt * st_n + j * 4 + e])
                                                * coef[0] + coef[1])

    @T.macro
    def int_running_max(mt, s, tu, red, red_i, alpha, m_f, m_i, moff, o, coef):
        """Online softmax on the integer score bits (no bias), row tile ``mt``: the running
        max per row as an int (masked keys are negative), the exponents shifted by it, and the
        accumulators rescaled."""
        for r in T.unroll(2):
            red_i[mt * 2 + r] = m_i[mt * 2 + r]
            for j in T.unroll(n_tiles):
                red_i[mt * 2 + r] = T.max(red_i[mt * 2 + r], T.max(
                    T.reinterpret("int32", tu[mt * st_n + j * 4 + 2 * r]),
                    T.reinterpret("int32", tu[mt * st_n + j * 4 + 2 * r + 1])))
            red_i[mt * 2 + r] = T.max(red_i[mt * 2 + r], T.call_extern(
                "int32", "__shfl_xor_sync", full, red_i[mt * 2 + r], 1, 32))
            red_i[mt * 2 + r] = T.max(red_i[mt * 2 + r], T.call_extern(
                "int32", "__shfl_xor_sync", full, red_i[mt * 2 + r], 2, 32))
            red[mt * 2 + r] = T.if_then_else(
                red_i[mt * 2 + r] >= 0,
                (T.reinterpret("float32", red_i[mt * 2 + r]) - magic_f) * coef[0], neg_inf)
            T.ptx["ex2.approx.ftz.f32"](alpha[mt * 2 + r], T.if_then_else(
                red_i[mt * 2 + r] >= 0, m_f[mt * 2 + r] - red[mt * 2 + r], T.float32(0)))
            m_f[mt * 2 + r] = red[mt * 2 + r]
            m_i[mt * 2 + r] = red_i[mt * 2 + r]
            moff[mt * 2 + r] = T.if_then_else(red_i[mt * 2 + r] >= 0,
                                              MAGIC - red_i[mt * 2 + r], 0)
        for j in T.unroll(n_tiles):
            for e in T.unroll(4):
                # masked keys: a huge negative argument (exp → 0)
                s[mt * st_n + j * 4 + e] = T.reinterpret(
                    "float32", T.reinterpret("int32", tu[mt * st_n + j * 4 + e])
                    + moff[mt * 2 + e // 2]) * coef[0] + coef[1]
        for i in T.unroll(ot):
            o[mt * ot + i] = o[mt * ot + i] * alpha[mt * 2 + (i % 4) // 2]

    @T.macro
    def exp2_scores(mt, s, xr, mode):
        """Softmax, row tile ``mt``: p = 2**s (arguments ≤ 0, or within ±range/2 unshifted) on
        the MUFU ``ex2`` unit, the first ``n_poly`` tiles as a polynomial on the FMA pipe;
        nothing left to do where the exp table gave p already."""
        if etab_on:
            if mode[0] == 0:  # the table covered the no-shift mode
                for j in T.unroll(n_tiles - n_poly):
                    for e in T.unroll(4):
                        T.ptx["ex2.approx.ftz.f32"](s[mt * st_n + (n_poly + j) * 4 + e],
                                                    s[mt * st_n + (n_poly + j) * 4 + e])
        else:
            for j in T.unroll(n_tiles - n_poly):
                for e in T.unroll(4):
                    T.ptx["ex2.approx.ftz.f32"](s[mt * st_n + (n_poly + j) * 4 + e],
                                                s[mt * st_n + (n_poly + j) * 4 + e])
        for j in T.unroll(n_poly):
            for e in T.unroll(4):
                # 2**x = 2**n · 2**f, n = round(x), f in [-0.5, 0.5]; 0 below 2**-125
                xr[1] = T.max(s[mt * st_n + j * 4 + e], T.float32(-125))
                xr[0] = xr[1] + magic_f
                xr[1] = xr[1] - (xr[0] - magic_f)
                s[mt * st_n + j * 4 + e] = T.if_then_else(
                    s[mt * st_n + j * 4 + e] < T.float32(-125), T.float32(0),
                    T.reinterpret("float32", T.reinterpret(
                        "int32", ((c3 * xr[1] + c2) * xr[1] + c1) * xr[1] + c0)
                        + (T.reinterpret("int32", xr[0]) << 23)))

    @T.macro
    def pack_p(mt, pa, s):
        """Softmax → P·V, row tile ``mt``: P rounded to 16 bits in pairs, laid out as the A
        fragments of the PV mma."""
        for c in T.unroll(n_chunks):
            for i in T.unroll(4):
                T.ptx[cvt_pair](pa[mt * sc_n + c * 4 + i],
                                s[mt * st_n + (2 * c + i // 2) * 4 + 2 * (i % 2) + 1],
                                s[mt * st_n + (2 * c + i // 2) * 4 + 2 * (i % 2)])

    @T.macro
    def pv_wgmma(st, o, pa, desc, Vs):
        """P·V on the warpgroup MMA (sm_90a): P (registers) @ [V | 1] (shared, group-major),
        one m64n(dv+8)k16 per 16 keys; descriptor: 128 B between the two 8-key halves (K),
        (kb + 1)·16 B between 8-column groups (N). Left running: the next block waits."""
        T.ptx["wgmma.fence.sync.aligned"]()
        for c in T.unroll(n_chunks):
            T.evaluate(T.cuda.wgmma.encode_matrix_descriptor(
                T.address_of(desc[0]), Vs.ptr_to([st, 16 * c * 4]), 8, kb + 1, 0))
            T.ptx[wgmma_pv](*[o[i] for i in range(ot)], pa[c * 4], pa[c * 4 + 1], pa[c * 4 + 2],
                            pa[c * 4 + 3], desc[0], T.bool(True), 1, 1, 1)
        T.ptx["wgmma.commit_group.sync.aligned"]()  # waited for by the next block

    @T.macro
    def pv_mma(st, o, pa, vf, Vs, lane):
        """P·V on the 16-bit tensor cores: P (registers) @ [V | 1] (shared, [key, dv], V
        fragments through ``ldmatrix.trans``); each V fragment serves every row tile."""
        for c in T.unroll(n_chunks):
            for mt in T.unroll(mt_n):  # the row sums: P times a tile of ones
                T.ptx[mma_pv](*regs(o, mt * ot + so), *regs(pa, mt * sc_n + c * 4), ones, ones,
                              *regs(o, mt * ot + so))
            for n2 in T.unroll(o_tiles // 2):
                # matrices: keys 16c+0..7 / 8..15 × dv groups 2·n2, 2·n2+1
                T.ptx[ld_x4](*regs(vf, 0), Vs.ptr_to(
                    [st, ((16 * c + lane % 16) * vstride + 2 * n2 + lane // 16) * 4]))
                for mt in T.unroll(mt_n):
                    for i in T.unroll(2):
                        T.ptx[mma_pv](*regs(o, mt * ot + (2 * n2 + i) * 4),
                                      *regs(pa, mt * sc_n + c * 4), vf[2 * i], vf[2 * i + 1],
                                      *regs(o, mt * ot + (2 * n2 + i) * 4))
            for n1 in T.unroll(o_tiles % 2):
                T.ptx[ld_x2](vf[0], vf[1], Vs.ptr_to(
                    [st, ((16 * c + lane % 16) * vstride + o_tiles - 1 + n1) * 4]))
                for mt in T.unroll(mt_n):
                    T.ptx[mma_pv](*regs(o, mt * ot + (o_tiles - 1) * 4),
                                  *regs(pa, mt * sc_n + c * 4), vf[0], vf[1],
                                  *regs(o, mt * ot + (o_tiles - 1) * 4))

    @T.macro
    def epilogue(o, lsum, acc, row, m_f, m_i, mode, O, b, h, t, Nq, Dw):
        """Epilogue: divide by the row sums (the ones tile; rows with no visible key give 0),
        round to 16-bit pairs and store the rows inside Nq."""
        if wg:
            T.ptx["wgmma.wait_group.sync.aligned"](0)
        for rr in T.unroll(2 * mt_n):
            # the row sum (the ones tile); rows with no visible key give 0
            lsum[rr] = o[(rr // 2) * ot + so + 2 * (rr % 2)]
            if has_bias:
                lsum[rr] = T.if_then_else((mode[0] != 0 or m_f[rr] > neg_inf)
                                          and lsum[rr] > T.float32(0),
                                          T.float32(1) / lsum[rr], T.float32(0))
            else:
                lsum[rr] = T.if_then_else((mode[0] != 0 or m_i[rr] >= 0)
                                          and lsum[rr] > T.float32(0),
                                          T.float32(1) / lsum[rr], T.float32(0))
        for mt in T.unroll(mt_n):
            for n in T.unroll(o_tiles):
                for r in T.unroll(2):
                    if row[mt * 2 + r] < Nq and 4 * n + t < Dw:
                        T.ptx[cvt_pair](acc[0], o[mt * ot + n * 4 + 2 * r + 1] * lsum[mt * 2 + r],
                                        o[mt * ot + n * 4 + 2 * r] * lsum[mt * 2 + r])
                        O[b, h, row[mt * 2 + r], 4 * n + t] = T.reinterpret("int32", acc[0])

    @T.prim_func
    def attention(qbits_h: T.handle, kbits_h: T.handle, kpop_h: T.handle, v_h: T.handle,
                  out_h: T.handle, qscale_h: T.handle, kscale_h: T.handle, bias_h: T.handle,
                  index_h: T.handle, causal: T.int32, ks_group: T.int32, bias_sb: T.int32,
                  bias_sh: T.int32, bias_sq: T.int32, bias_sk: T.int32, mult: T.float32,
                  d_bits: T.int32):
        T.func_attr({"global_symbol": attention_name(dtype, dv, has_bias, table=table),
                     "tirx.noalias": True})
        B = T.int32()
        Hq = T.int32()
        Hkv = T.int32()
        Hks = T.int32()
        Nq = T.int32()
        Nk = T.int32()
        Dw = T.int32()
        NB = T.int32()
        NI = T.int32()
        Qb = T.match_buffer(qbits_h, (B, Hq, Nq, QBITS_WORDS), "int32")
        Kb = T.match_buffer(kbits_h, (B, Hkv, Nk, QBITS_WORDS), "int32")
        Kp = T.match_buffer(kpop_h, (B, Hkv, Nk), "int32")
        Dq = T.int32()
        vsb, vsh, vsn, osb, osh, osn = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                        T.int32())
        V = T.match_buffer(v_h, (B, Hkv, Nk, Dq, 4), "int32", strides=(vsb, vsh, vsn, 4, 1))
        O = T.match_buffer(out_h, (B, Hq, Nq, Dw), "int32", strides=(osb, osh, osn, 1))
        Sq = T.match_buffer(qscale_h, (B * Hq,), "float32")
        Sk = T.match_buffer(kscale_h, (Hks,), "float32")
        Bias = T.match_buffer(bias_h, (NB,), "float32")
        Idx = T.match_buffer(index_h, (NI,), "int32")
        for bx in T.thread_binding(T.ceildiv(Nq, rows_per_cta), thread="blockIdx.x"):
            for bh in T.thread_binding(B * Hq, thread="blockIdx.y"):
                for tid in T.thread_binding(nthreads, thread="threadIdx.x"):
                    if schedule.min_blocks > 0:  # __launch_bounds__(nthreads, min_blocks)
                        T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", schedule.min_blocks)
                    Ks = T.alloc_buffer((stages, kb, QBITS_WORDS), "int32", scope="shared")
                    Kps = T.alloc_buffer((stages, kb // 2, 4), "int32", scope="shared")
                    Vs = T.alloc_buffer((stages, vwords), "int32", scope="shared")
                    # exp_table: 2**(s·coef) for every score s in [−D, D], then a 0 for masked
                    # keys
                    etab = T.alloc_buffer((ETAB_SIZE if etab_on else 1,), "float32",
                                          scope="shared")
                    # table: this head's column of the bias table
                    tab = T.alloc_buffer((trows,), "float32", scope="shared")
                    tred = T.alloc_buffer((2 * warps if table else 1,), "float32", scope="shared")
                    trange = T.alloc_buffer((2,), "float32", scope="local")  # its max, min
                    trow = T.alloc_buffer((1,), "int32", scope="local")  # its rows
                    tval = T.alloc_buffer((trows // nthreads if table else 1,), "float32",
                                          scope="local")
                    # per row (index 2·mt + r: row tile mt, row g or g + 8)
                    qa = T.alloc_buffer((4 * mt_n,), "uint32", scope="local")
                    row = T.alloc_buffer((2 * mt_n,), "int32", scope="local")
                    lim = T.alloc_buffer((2 * mt_n,), "int32", scope="local")
                    m_i = T.alloc_buffer((2 * mt_n,), "int32", scope="local")
                    m_f = T.alloc_buffer((2 * mt_n,), "float32", scope="local")
                    moff = T.alloc_buffer((2 * mt_n,), "int32", scope="local")
                    alpha = T.alloc_buffer((2 * mt_n,), "float32", scope="local")
                    red = T.alloc_buffer((2 * mt_n,), "float32", scope="local")
                    red_i = T.alloc_buffer((2 * mt_n,), "int32", scope="local")
                    lsum = T.alloc_buffer((2 * mt_n,), "float32", scope="local")
                    acc = T.alloc_buffer((4,), "uint32", scope="local")
                    kf = T.alloc_buffer((2,), "int32", scope="local")
                    vf = T.alloc_buffer((4,), "uint32", scope="local")
                    cst = T.alloc_buffer((n_tiles * 4,), "int32", scope="local")
                    tu = T.alloc_buffer((st_n * mt_n,), "uint32", scope="local")
                    s = T.alloc_buffer((st_n * mt_n,), "float32", scope="local")
                    bv = T.alloc_buffer((st_n if has_bias else 1,), "float32",
                                        scope="local")  # biases (log2)
                    xr = T.alloc_buffer((2,), "float32", scope="local")
                    pa = T.alloc_buffer((sc_n * mt_n,), "uint32", scope="local")
                    o = T.alloc_buffer((ot * mt_n,), "float32", scope="local")
                    coef = T.alloc_buffer((2,), "float32", scope="local")
                    mode = T.alloc_buffer((2,), "int32", scope="local")  # fixed shift?, narrow?
                    desc = T.alloc_buffer((1,), "uint64", scope="local")
                    # per-thread copy offsets (element offsets; a block adds its key offset)
                    k_src = T.alloc_buffer((k_iters,), "int32", scope="local")
                    k_dst = T.alloc_buffer((k_iters,), "int32", scope="local")
                    p_dst = T.alloc_buffer((p_iters,), "int32", scope="local")
                    v_src = T.alloc_buffer((v_iters,), "int32", scope="local")
                    v_dst = T.alloc_buffer((v_iters,), "int32", scope="local")
                    fast_src = T.alloc_buffer((3,), "int32", scope="local")
                    fast_dst = T.alloc_buffer((3,), "int32", scope="local")
                    b = bh // Hq
                    h = bh % Hq
                    hk = h // (Hq // Hkv)
                    lane = tid % 32
                    g = lane // 4
                    t = lane % 4
                    q_first = bx * rows_per_cta
                    q0 = q_first + (tid // 32) * rows_per_warp
                    kv_row0 = (b * Hkv + hk) * Nk  # first key row of this (b, kv head)
                    # V's (b, kv head) offset: V is read through its strides
                    v_row0 = b * vsb + hk * vsh
                    score_coefficient(coef, Sq, Sk, B, Hks, bh, b, h, ks_group, mult)
                    softmax_mode(coef, mode, etab, xr, d_bits, tid)
                    if table:  # the head's column into shared memory, its range into trange
                        table_prologue(tab, tred, tval, trange, trow, Bias, NB, Hq, bias_sb,
                                       bias_sh, h, tid, lane)
                        if not etab_on:
                            mode[0] = T.Cast("int32", coef[0] * T.Cast("float32", 2 * d_bits)
                                             + (trange[0] - trange[1]) * T.float32(LOG2E)
                                             <= static_range)
                    query_rows(row, lim, m_i, m_f, moff, qa, Qb, mode, b, h, q0, g, t, causal,
                               Nq, Nk)
                    copy_offsets(k_src, k_dst, p_dst, v_src, v_dst, fast_src, fast_dst, Vs, tid,
                                 kv_row0, v_row0, vsn, Dq, mode)
                    for i in T.unroll(ot * mt_n):
                        o[i] = T.float32(0)
                    kv_len = T.if_then_else(causal != 0, T.min(Nk, q_first + rows_per_cta), Nk)
                    warp_lim = T.if_then_else(causal != 0, T.min(Nk, q0 + 1), Nk)
                    n_blocks = T.ceildiv(kv_len, kb)
                    for pre in T.serial(ahead + n_blocks):
                        # stage the block `pre` (cp.async, zero-filled past Nk) ...
                        if pre >= ahead:
                            T.ptx["cp.async.wait_group"](ahead - 1)
                        T.tvm_storage_sync("shared")
                        if pre < n_blocks:
                            if (pre + 1) * kb <= Nk and Dq == groups:
                                copy_full_block(pre, Ks, Kps, Vs, Kb, Kp, V, fast_src, fast_dst,
                                                v_src, v_dst, tid, vsn)
                            else:
                                copy_last_block(pre, Ks, Kps, Vs, Kb, Kp, V, k_src, k_dst, p_dst,
                                                v_src, v_dst, tid, kv_row0, Nk, Dq, vsn)
                        T.ptx["cp.async.commit_group"]()
                        advance_copy_bases(pre, fast_src, fast_dst, vsn)
                        # ... while the block `ahead` behind it computes
                        if pre >= ahead:
                            kblk = pre - ahead
                            st = kblk % stages
                            k0 = kblk * kb
                            qk_scores(st, k0, tu, cst, kf, acc, qa, Ks, Kps, lim, mode, g, t,
                                      warp_lim)
                            if wg:
                                # the previous block's wgmma still accumulates into o: the online
                                # softmax rescales o, so it waits here (the fixed shift never does)
                                if has_bias:
                                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                                elif mode[0] == 0:
                                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                            for mt in T.unroll(mt_n):
                                if has_bias:
                                    bias_scores(mt, s, bv, tu, tab, Idx, Bias, row, coef, b, h,
                                                k0, t, bias_sb, bias_sh, bias_sq, bias_sk, Nq, Nk)
                                    if mode[0] == 0:  # online (a table may fit the fixed shift)
                                        float_running_max(mt, s, red, alpha, m_f, o)
                                elif mode[0] != 0:
                                    unshifted_scores(mt, s, tu, etab, coef, d_bits)
                                else:
                                    int_running_max(mt, s, tu, red, red_i, alpha, m_f, m_i, moff,
                                                    o, coef)
                                exp2_scores(mt, s, xr, mode)
                                if wg:  # P registers are read by the previous block's wgmma
                                    T.ptx["wgmma.wait_group.sync.aligned"](0)
                                pack_p(mt, pa, s)
                            if wg:
                                pv_wgmma(st, o, pa, desc, Vs)
                            else:
                                pv_mma(st, o, pa, vf, Vs, lane)
                    epilogue(o, lsum, acc, row, m_f, m_i, mode, O, b, h, t, Nq, Dw)

    return attention
