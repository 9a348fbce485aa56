"""TensorIR definitions of binattn's CPU kernels (TVMScript / TE, target LLVM).

What it does: turns a workload (shapes, flags) plus schedule knobs
(``binattn.schedules.cpu.knobs``) into a ``tvm.IRModule`` ready for ``tvm.compile``:

* ``sign_pack_module``: ``x [B, H, N, D]`` → packed words ``[B, H, N, W]``, row popcounts and
  row sums of ``|x|`` ``[B, H, N]`` (so the per-(b, h) mean|x| scale comes from the same pass).
* ``scores_module``: the packed popcount score kernel (exact int32, XOR identity), TE + schedule.
* ``attention_module``: the fused binary-attention kernel. One task per (b, q-head, q-block);
  key tiles, online softmax (running max / sum), P·V accumulated in registers, no N×N tensor.
  Optional additive tensor (bias + mask), causal masking with tile skipping, GQA (kv head =
  q head // group). Scores are exact integers times one float per (b, h).
* ``attention_pv8_lut_module``: ``pv_bits=8`` without bias/mask (``pv8_uses_lut``): scores
  once as popcount bytes, no exponential per key — the row sum from 16-entry float tables and
  the quantized P from a per-row byte table (AVX-512 VBMI ``vpermi2b``), u8×s8 ``vpdpbusd``.
* ``attention_pv8_module``: the other ``pv_bits=8`` calls: pass 1 finds each row's max and sum,
  pass 2 quantizes the normalized P to u8 and accumulates u8×s8 products in int32 (AVX-512 VNNI
  ``vpdpbusd`` where the target has it, plain integer loops elsewhere).
* ``quantize_v_module``: V → s8 per (b, h, channel) in the ``vpdpbusd`` layout, with scales.

Style: every kernel is a ``@T.prim_func``, as the CUDA ones and ``backward.py``. The attention
kernels are built from ``@T.macro`` stages (``_stages``: a row's scores, the online-softmax step,
the u8 × s8 P·V tile, the store; per kernel: the float P·V tile, the quantized rows, the table
passes). Workload constants (words, Dv, flags, knobs) are closure values: an ``if`` on one is
resolved at parse time, and expressions unrolled over them (popcount sums over the words,
reductions over the vector lanes, LLVM intrinsic calls) come from Python helpers that return
PrimExprs. The P·V register tile is a workload-dependent number of small buffers (one per
``acc_cols`` value columns or 16 VNNI lanes, each under TVM's 1 KiB stack-allocation limit so
that LLVM keeps it in registers, all live through one pass over a tile's keys):
``_register_tile`` allocates them from inside the script and ``_each`` expands a macro once per
buffer. Every attention kernel takes the additive tensor ``add`` (a 1-element tensor, unread,
when ``wl.add_bcast`` is None).

Inputs and outputs are read and written in place: q, k (``sign_pack_module``) and v (the float
P·V loop, ``quantize_v_module``) in float32, float16 or bfloat16 through symbolic strides (unit
stride on the last dim; each element cast to float32 as it is read), and the attention kernels
write the op's output tensor, strided, in its dtype, only its true ``NQO`` rows and Dv columns.
Only the packed bits are padded (Nq to ``block_q``, Nk to ``block_k``, with the true key count
``nk`` as a scalar: keys past it are masked); the float P·V loop stops at ``nk`` and the key tile
reaching past it clamps its column into the additive tensor, so no tensor is read past its end.
Tensor arguments may start at any element (views): buffers declare ``ELEM_ALIGN``.
``cpu_dispatch`` prepares the bits and scales. What it does not: build, cache or call kernels
(``cpu_build`` / ``cache`` / ``cpu_dispatch``) or choose knobs (``binattn.schedules``).
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import tvm
from tvm import te, tirx
from tvm.script import tirx as T

from ...schedules.cpu.knobs import AttentionKnobs, ScoreKnobs

WORD_BITS = 32
# alignment TVM may assume of a tensor argument: views (a fused QKV projection's slices, the
# output's [B, N, H, Dv] layout) start anywhere; 2 bytes is what every dtype here has
ELEM_ALIGN = 2


@dataclass(frozen=True)
class AttentionWorkload:
    """What a fused-attention kernel is specialised for (its shape bucket): words per row
    (D itself is a runtime argument), the value dim Dv (exact: V is read and the output written
    in place, ``dv16`` pads only the kernels' own 8-bit tiles), flags, and the dtype of V and
    of the output. B, H, Nq, Nk and every stride stay symbolic.

    ``add_bcast`` says which of (B, H, Nq) the additive tensor broadcasts over (None: no tensor).
    """

    words: int
    value_dim: int
    causal: bool = False
    add_bcast: Optional[tuple[bool, bool, bool]] = None
    pv8: bool = False
    dtype: str = "float32"

    @property
    def dv16(self) -> int:
        """Dv rounded up to 16: the width of the s8 V layout and of the 8-bit kernels' tiles."""
        return -(-self.value_dim // 16) * 16

    def tag(self) -> str:
        add = ("none" if self.add_bcast is None
               else "".join("1" if b else "n" for b in self.add_bcast))
        pv = "32" if not self.pv8 else "8lut" if pv8_uses_lut(self) else "8"
        return f"attn_w{self.words}_dv{self.value_dim}_c{int(self.causal)}_add{add}_pv{pv}"


# --------------------------------------------------------------------------- sign_pack
def _abs(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """|x| as max(x, −x): vectorizes (TVM's ``fabs`` of a float32 vector is split into scalar
    bit operations by this LLVM target, which made the sign-pack pass 1.5× slower)."""
    return T.max(x, -x)


def _row_packer(words: int):
    """The macro packing one row: ``word[w]`` ← the sign bits of ``x[b, h, n, :]`` (bit j of
    word w for element 32·w + j, 1 where x ≥ 0), ``acc[0..15]`` ← lane partial sums of |x|
    (``_tree`` of them is the row's Σ|x|). Each element is cast to float32 as it is read. A
    full word is one 32-lane compare and a 16-lane |x| sum; the last, partial word (D not a
    multiple of 32) goes element by element."""

    @T.macro
    def pack_row(x, word, acc, b, h, n, D):
        for lane in T.vectorized(16):
            acc[lane] = T.float32(0)
        for w in range(words):
            if w * 32 + 32 <= D:
                bit = T.alloc_buffer((32,), "int32")
                for j in T.vectorized(32):
                    bit[j] = T.Select(T.Cast("float32", x[b, h, n, w * 32 + j]) >= T.float32(0),
                                      T.shift_left(T.int32(1), j), T.int32(0))
                for j in T.vectorized(16):
                    acc[j] = acc[j] + (_abs(T.Cast("float32", x[b, h, n, w * 32 + j]))
                                       + _abs(T.Cast("float32", x[b, h, n, w * 32 + 16 + j])))
                word[w] = _tree(T.bitwise_or, [bit[j] for j in range(32)])
            else:
                word[w] = 0
                for j in range(32):
                    if w * 32 + j < D:
                        word[w] = word[w] | T.shift_left(T.Cast(
                            "int32", T.Cast("float32", x[b, h, n, w * 32 + j]) >= T.float32(0)),
                            j)
                        acc[j % 16] = acc[j % 16] + _abs(T.Cast("float32",
                                                                x[b, h, n, w * 32 + j]))

    return pack_row


def sign_pack_module(words: int, dtype: str = "float32") -> tvm.IRModule:
    """``x [B, H, N, D]`` (``dtype``, any strides on B, H, N, unit stride on D) → words
    ``[B, H, N, W]`` int32 (any strides: the attention kernels' key layout ``[.., W, N]`` is a
    transposed view), row popcounts ``[B, H, N]`` int32 and row sums of ``|x|`` ``[B, H, N]``
    float32 (so the per-(b, h) mean|x| scale comes from the same pass). Each element is cast
    to float32 as it is read: no converted copy of x.

    D is read from the input's shape at run time; one kernel serves every D with W words.
    """
    pack_row = _row_packer(words)

    @T.prim_func
    def main(x_h: T.handle, bits_h: T.handle, pops_h: T.handle, abs_h: T.handle):
        T.func_attr({"tir.noalias": True})
        B, H, N, D = T.int32(), T.int32(), T.int32(), T.int32()
        ws = (T.int32(), T.int32(), T.int32(), T.int32())
        xs = (T.int32(), T.int32(), T.int32())
        x = T.match_buffer(x_h, (B, H, N, D), dtype, strides=(*xs, 1), align=ELEM_ALIGN)
        bits = T.match_buffer(bits_h, (B, H, N, words), "int32", strides=ws, align=ELEM_ALIGN)
        pops = T.match_buffer(pops_h, (B, H, N), "int32")
        absx = T.match_buffer(abs_h, (B, H, N), "float32")
        for ro in T.parallel((B * H * N + 63) // 64):
            acc = T.alloc_buffer((16,), "float32")
            word = T.alloc_buffer((words,), "int32")
            for ri in range(64):
                r = T.Bind(ro * 64 + ri)
                if r < B * H * N:
                    b = T.Bind(r // (H * N))
                    h = T.Bind(r // N % H)
                    n = T.Bind(r % N)
                    pack_row(x, word, acc, b, h, n, D)
                    for w in range(words):
                        bits[b, h, n, w] = word[w]
                    pops[b, h, n] = _chain(operator.add,
                                           [T.popcount(word[w]) for w in range(words)])
                    absx[b, h, n] = _tree(T.Add, [acc[i] for i in range(16)])

    return _module(main)


def prepare_module(words: int, dtype: str, scale_mode: str) -> tvm.IRModule:
    """Everything the attention kernels read of q and k, in one call: ``q [B, H, NQ, D]`` and
    ``k [B, HK, NK, D]`` (``dtype``, read in place through their strides) → q's words
    ``qb [B, H, NQP, W]`` and k's transposed ``kb [B, HK, W, NKP]`` (rows past NQ / NK zero),
    the per-(b, q head) magnitudes ``sq``, ``sk`` ``[B, H]`` and score multiplier ``coef [B, H]``
    = sq·sk·``scale``, as ``reference.qk_scale``, ``magnitude_scale`` and ``nan_unless_finite``
    define them: ``mean_abs`` writes mean|x| of the (b, head) (k's kv head under GQA),
    ``none`` 1, ``static`` reads the static scales from ``sq``/``sk`` — each poisoned to NaN
    where the (b, head)'s Σ|x| is not finite, and ``coef`` NaN where it is not finite.
    ``qa [B, H, NQ]`` and ``ka [B, HK, NK]`` are scratch (row sums of |x|)."""
    pack_row = _row_packer(words)

    @T.macro
    def pack_rows(x, bits, absx, B, H, N, NP, D, keys: bool):
        """Rows of x into ``bits`` (zeros past N; ``keys``: the transposed layout), Σ|x| per row
        into ``absx``."""
        for ro in T.parallel((B * H * NP + 63) // 64):
            acc = T.alloc_buffer((16,), "float32")
            word = T.alloc_buffer((words,), "int32")
            for ri in range(64):
                r = T.Bind(ro * 64 + ri)
                if r < B * H * NP:
                    b = T.Bind(r // (H * NP))
                    h = T.Bind(r // NP % H)
                    n = T.Bind(r % NP)
                    if n < N:
                        pack_row(x, word, acc, b, h, n, D)
                        absx[b, h, n] = _tree(T.Add, [acc[i] for i in range(16)])
                    else:
                        for w in range(words):
                            word[w] = 0
                    for w in range(words):
                        if keys:
                            bits[b, h, w, n] = word[w]
                        else:
                            bits[b, h, n, w] = word[w]

    @T.macro
    def magnitude(s, total, count):
        """s[0] ← the (b, head)'s magnitude from its Σ|x| ``total`` over ``count`` elements,
        NaN where ``total`` is not finite (explicit tests: LLVM may fold ``total·0``)."""
        if scale_mode == "mean_abs":
            s[0] = total / T.Cast("float32", count)
        elif scale_mode == "none":
            s[0] = T.float32(1)
        s[0] = T.Select(_finite(total), s[0], NAN)

    @T.prim_func
    def main(q_h: T.handle, k_h: T.handle, qb_h: T.handle, kb_h: T.handle, qa_h: T.handle,
             ka_h: T.handle, sq_h: T.handle, sk_h: T.handle, coef_h: T.handle,
             scale: T.float32):
        T.func_attr({"tir.noalias": True})
        B, H, HK, NQ, NK, D = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        NQP, NKP = T.int32(), T.int32()
        qs = (T.int32(), T.int32(), T.int32())
        ks = (T.int32(), T.int32(), T.int32())
        q = T.match_buffer(q_h, (B, H, NQ, D), dtype, strides=(*qs, 1), align=ELEM_ALIGN)
        k = T.match_buffer(k_h, (B, HK, NK, D), dtype, strides=(*ks, 1), align=ELEM_ALIGN)
        qb = T.match_buffer(qb_h, (B, H, NQP, words), "int32")
        kb = T.match_buffer(kb_h, (B, HK, words, NKP), "int32")
        qa = T.match_buffer(qa_h, (B, H, NQ), "float32")
        ka = T.match_buffer(ka_h, (B, HK, NK), "float32")
        sq = T.match_buffer(sq_h, (B, H), "float32")
        sk = T.match_buffer(sk_h, (B, H), "float32")
        coef = T.match_buffer(coef_h, (B, H), "float32")
        pack_rows(q, qb, qa, B, H, NQ, NQP, D, False)
        pack_rows(k, kb, ka, B, HK, NK, NKP, D, True)
        for bh in range(B * H):
            b = T.Bind(bh // H)
            h = T.Bind(bh % H)
            hk = T.Bind(h // (H // HK))
            tot = T.alloc_buffer((2,), "float32")
            s = T.alloc_buffer((2,), "float32")
            tot[0] = T.float32(0)
            tot[1] = T.float32(0)
            for n in range(NQ):
                tot[0] = tot[0] + qa[b, h, n]
            for n in range(NK):
                tot[1] = tot[1] + ka[b, hk, n]
            s[0] = sq[b, h]
            magnitude(s, tot[0], NQ * D)
            sq[b, h] = s[0]
            s[0] = sk[b, h]
            magnitude(s, tot[1], NK * D)
            sk[b, h] = s[0]
            s[1] = sq[b, h] * sk[b, h] * scale
            coef[b, h] = T.Select(_finite(s[1]), s[1], NAN)

    return _module(main)


# --------------------------------------------------------------------------- popcount scores
def scores_te(words: int, n_q: Optional[int] = None, n_k: Optional[int] = None,
              batch: Optional[int] = None, head_dim: Optional[int] = None) -> tvm.tirx.PrimFunc:
    """TE definition: S[b, m, n] = D − 2·Σ_w popc(Q[b, m, w] XOR K[b, n, w]) (int32).

    Batch, Nq and Nk are symbolic when None. ``head_dim=None`` makes D a runtime argument;
    meta_schedule needs it (and the batch) constant: it accepts only buffer arguments. D is a
    runtime int32 argument (``hd``, last), so one kernel serves every D with this many words.
    """
    batch = te.var("batch", "int32") if batch is None else batch
    n_q = te.var("n_q", "int32") if n_q is None else n_q
    n_k = te.var("n_k", "int32") if n_k is None else n_k
    runtime_d = head_dim is None
    head_dim = te.var("hd", "int32") if runtime_d else tirx.const(head_dim, "int32")
    q = te.placeholder((batch, n_q, words), "int32", name="Q")
    k = te.placeholder((batch, n_k, words), "int32", name="K")
    w = te.reduce_axis((0, words), name="w")
    # D is folded into the sum (a reduction must be the top level of a compute): every word
    # carries 32 of it, the last one the rest
    share = (head_dim if words == 1 else
             tirx.Select(w == words - 1, head_dim - WORD_BITS * (words - 1), WORD_BITS))
    s = te.compute((batch, n_q, n_k), lambda b, m, n: te.sum(
        share - 2 * tirx.popcount(q[b, m, w] ^ k[b, n, w]), axis=w), name="S")
    return te.create_prim_func([q, k, s, head_dim] if runtime_d else [q, k, s])


def schedule_scores(mod: tvm.IRModule, knobs: ScoreKnobs) -> tvm.IRModule:
    """Schedule C of TVM_NOTES §1: register tile tile_m × tile_n, vectorized n, parallel."""
    sch = tvm.s_tir.Schedule(mod)
    block = sch.get_sblock("S")
    b, m, n, w = sch.get_loops(block)
    mo, mi = sch.split(m, [None, knobs.tile_m])
    no, ni = sch.split(n, [None, knobs.tile_n])
    sch.reorder(b, mo, no, w, mi, ni)
    sch.parallel(sch.fuse(b, mo, no))
    sch.unroll(w)
    sch.unroll(mi)
    sch.vectorize(ni)
    sch.decompose_reduction(block, w)
    return sch.mod


def scores_module(words: int, knobs: ScoreKnobs, n_q: Optional[int] = None,
                  n_k: Optional[int] = None) -> tvm.IRModule:
    """Scheduled score kernel (exact Nq/Nk when given, else symbolic)."""
    mod = tvm.IRModule({"main": scores_te(words, n_q, n_k)})
    return schedule_scores(mod, knobs)


# --------------------------------------------------------------------------- fused attention
def fexp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 vectors: Cody-Waite range reduction + degree-6 polynomial, 0 below −87.

    Built from Let expressions so each intermediate appears once (keeps the IR, and the build
    time, small). Relative error ≈ 2 ulp; exp(−inf) = 0 exactly.
    """
    f = lambda c: tirx.const(c, "float32")  # noqa: E731
    xv, cv, nv, rv = (tirx.Var(name, "float32") for name in ("fx", "fc", "fn", "fr"))
    poly = f(0.0013888889)
    for coeff in (0.008333334, 0.041666668, 0.16666667, 0.5, 1.0, 1.0):
        poly = f(coeff) + rv * poly
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", nv) + 127, 23))
    body = tirx.Let(rv, cv - nv * f(0.693359375) + nv * f(2.12194440e-4), poly * two_n)
    body = tirx.Let(nv, tirx.floor(cv * f(1.4426950408889634) + f(0.5)), body)
    clamped = tirx.max(tirx.min(xv, f(88.0)), f(-87.0))
    return tirx.Let(xv, x, tirx.Select(xv < f(-87.0), f(0.0), tirx.Let(cv, clamped, body)))


NEG_INF = tirx.const(-math.inf, "float32")
NAN = tirx.const(math.nan, "float32")


def _finite(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """x is neither NaN nor ±Inf."""
    return tirx.And(tirx.Not(tirx.isnan(x)), tirx.Not(tirx.isinf(x)))


def _tree(op, items: list):
    """Balanced reduction op(op(a, b), op(c, d)) … of PrimExprs (``op``: ``T.Add``, ``T.max``)."""
    while len(items) > 1:
        items = [op(items[i], items[i + 1]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


def _chain(op, items: list):
    """Left-to-right reduction op(op(a, b), c) … (as ``a + b + c`` written out)."""
    return functools.reduce(op, items)


def _llvm(name: str, dtype: str, *args) -> tirx.PrimExpr:
    """A pure LLVM intrinsic call (``llvm.roundeven``, the AVX-512 ones below)."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def _u8_level(scaled: tirx.PrimExpr) -> tirx.PrimExpr:
    """min(round(x), 255) as uint8 for x = 255·p ≥ 0, halves to even like
    ``reference.quantize_probs_u8`` (torch.round): uniform rows hit exact halves (255/102)."""
    return T.Cast("uint8", T.min(_llvm("llvm.roundeven", "float32", scaled), T.float32(255)))


def _value_chunks(value_dim: int, cols: int) -> list[tuple[int, int]]:
    """(first column, width) of the P·V register buffers: ``cols`` wide, the last one the rest."""
    return [(c, min(cols, value_dim - c)) for c in range(0, value_dim, cols)]


def _register_tile(rows: int, chunks: list[tuple[int, int]], dtype: str) -> list:
    """One ``rows`` × width buffer per chunk, allocated where this is called (inside a script).

    The P·V accumulator tile is split so that each piece stays under TVM's 1 KiB stack-allocation
    limit: LLVM then keeps all of them in registers while one pass over the keys updates them.
    """
    return [T.alloc_buffer((rows, width), dtype) for _, width in chunks]


def _each(stage, regs: list, chunks: list[tuple[int, int]], *args) -> None:
    """Expand the macro ``stage(reg, first column, width, *args)`` once per register buffer."""
    for reg, (col, width) in zip(regs, chunks):
        stage(reg, col, width, *args)


def _n_tiles(knobs: AttentionKnobs, wl: AttentionWorkload, NK, q0) -> tirx.PrimExpr:
    """The key-tile count of a task: all tiles, or (causal) those up to its q block's diagonal."""
    bq, bk = knobs.block_q, knobs.block_k
    return T.min(NK // bk, (q0 + bq + bk - 1) // bk) if wl.causal else NK // bk


def _stages(wl: AttentionWorkload, knobs: AttentionKnobs) -> SimpleNamespace:
    """The stages the attention kernels share, specialised for ``wl`` and ``knobs``: scores of a
    row of a key tile, the online-softmax step, the u8 × s8 P·V tile, the output store."""
    bq, bk, ri, vl = knobs.block_q, knobs.block_k, knobs.rows, knobs.vector
    words, causal, dtype, dv = wl.words, wl.causal, wl.dtype, wl.value_dim
    has_add, pv8 = wl.add_bcast is not None, wl.pv8
    lanes = _value_chunks(wl.dv16, 16)

    def add_at(add, b, h, row, col, clamp: bool) -> tirx.PrimExpr:
        """The additive tensor at (row, col): broadcast dims read index 0, a padded query row
        its last row, and with ``clamp`` (a tile reaching past Nk) a padded key its last key."""
        bb, hb, qb = wl.add_bcast
        return add[0 if bb else b, 0 if hb else h, 0 if qb else T.min(row, add.shape[2] - 1),
                   T.min(col, add.shape[3] - 1) if clamp else col]

    def score(qb, kb, add, c, b, h, hk, row, col, nk, hd, clamp: bool) -> tirx.PrimExpr:
        """The float score of (row, col), −inf where masked (past ``nk``; causal: col > row)."""
        popc = _chain(operator.add, [T.popcount(qb[b, h, row, w] ^ kb[b, hk, w, col])
                                     for w in range(words)])
        s = c * T.Cast("float32", hd - 2 * popc)
        if has_add:
            s = s + add_at(add, b, h, row, col, clamp)
        keep = T.And(col < nk, col <= row) if causal else col < nk
        return T.Select(keep, s, NEG_INF)

    @T.macro
    def fill_row(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, clamp, track_max):
        """S[i, :] = row ``row``'s masked scores of the tile at k0 (``track_max``: the lane-wise
        maximum into ``red``)."""
        for jo in range(bk // vl):
            for jj in T.vectorized(vl):
                S[i, jo * vl + jj] = score(qb, kb, add, c, b, h, hk, row, k0 + jo * vl + jj, nk,
                                           hd, clamp)
                if track_max:
                    red[jj] = T.max(red[jj], S[i, jo * vl + jj])

    @T.macro
    def row_scores(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, track_max):
        """Row i's scores of a key tile. With an additive tensor, tiles inside Nk read it with
        unit-stride vector loads and the tile reaching past Nk clamps its column (no read past
        Nk)."""
        if track_max:
            for jj in T.vectorized(vl):
                red[jj] = NEG_INF
        if has_add:
            if k0 + bk <= nk:
                fill_row(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, False, track_max)
            else:
                fill_row(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, True, track_max)
        else:
            fill_row(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, False, track_max)

    @T.macro
    def online_softmax(S, red, m, l, acc, i, rescale):
        """Row i after ``row_scores(track_max=True)``: new running max, P = exp(s − max) over S,
        running sum rescaled and increased (``rescale``: the row's accumulators rescaled too)."""
        mnew = T.Bind(T.max(m[i], _tree(T.max, [red[x] for x in range(vl)])))
        muse = T.Bind(T.Select(mnew == NEG_INF, T.float32(0), mnew))
        alpha = T.Bind(fexp(m[i] - muse))
        for jj in T.vectorized(vl):
            red[jj] = T.float32(0)
        for jo in range(bk // vl):
            for jj in T.vectorized(vl):
                S[i, jo * vl + jj] = fexp(S[i, jo * vl + jj] - muse)
                red[jj] = red[jj] + S[i, jo * vl + jj]
        l[i] = l[i] * alpha + _tree(T.Add, [red[x] for x in range(vl)])
        m[i] = mnew
        if rescale:
            for d in T.vectorized(dv):
                acc[i, d] = acc[i, d] * alpha

    @T.macro
    def lanes_zero(r, col, width):
        """One 16-lane int32 register buffer of the u8 × s8 tile set to 0."""
        for ii in T.unroll(ri):
            for d in T.vectorized(width):
                r[ii, d] = 0

    @T.macro
    def lanes_dot(r, col, width, pw, v8, b, hk, k0, j4, ii):
        """vpdpbusd: lane d of row ii += Σ_4 u8 P bytes ``pw`` × s8 V[keys 4·j4 …, col + d]."""
        r[ii, T.ramp(0, 1, width)] = _llvm(VPDPBUSD, "int32x16", r.vload([ii, 0], "int32x16"),
                                           pw, v8.vload([b, hk, k0 // 4 + j4, col, 0], "int8x64"))

    @T.macro
    def lanes_add(r, col, width, acc, io):
        """A register buffer added into the task's int32 accumulators."""
        for ii in T.unroll(ri):
            for d in T.vectorized(width):
                acc[io * ri + ii, col + d] = acc[io * ri + ii, col + d] + r[ii, d]

    @T.macro
    def vnni_pv(acc, P, p_col, v8, b, hk, k0):
        """u8 P × s8 V of one key tile (vpdpbusd, 4 keys a step) into ``acc`` through a
        ``rows`` × Dv int32 register tile (one 16-lane buffer per 16 channels);
        ``P[row, p_col + 4·j4]`` holds the tile's P bytes."""
        for io in range(bq // ri):
            regs = _register_tile(ri, lanes, "int32")
            _each(lanes_zero, regs, lanes)
            for j4 in range(bk // 4):
                for ii in T.unroll(ri):
                    pw = T.Bind(T.reinterpret("int8x64", T.broadcast(T.reinterpret(
                        "int32", P.vload([io * ri + ii, p_col + j4 * 4], "uint8x4")), 16)))
                    _each(lanes_dot, regs, lanes, pw, v8, b, hk, k0, j4, ii)
            _each(lanes_add, regs, lanes, acc, io)

    @T.macro
    def store_rows(out, acc, l, vscale, c, b, h, hk, q0, NQO):
        """Write the task's true rows (q0 + i < NQO) into ``out``, cast to its dtype: acc / l
        (float P·V), else (8-bit) the int32 sums times the V scales. A NaN coefficient ``c`` (a
        NaN/Inf in this (b, h)'s q or k) writes NaN, as the reference gives: the running max
        skips NaN scores, so the rows could otherwise come out finite."""
        for i in range(bq):
            if q0 + i < NQO:
                if not pv8:
                    inv = T.Bind(T.Select(l[i] > T.float32(0), T.float32(1) / l[i],
                                          T.float32(0)))
                    for d in T.vectorized(dv):
                        out[b, h, q0 + i, d] = T.Cast(dtype, T.Select(T.isnan(c), c,
                                                                      acc[i, d] * inv))
                else:
                    for d in T.vectorized(dv):
                        out[b, h, q0 + i, d] = T.Cast(dtype, T.Select(
                            T.isnan(c), c, T.Cast("float32", acc[i, d]) * vscale[b, hk, d]))

    return SimpleNamespace(row_scores=row_scores, online_softmax=online_softmax,
                           vnni_pv=vnni_pv, store_rows=store_rows)


def attention_module(wl: AttentionWorkload, knobs: AttentionKnobs) -> tvm.IRModule:
    """Fused binary attention with full-precision P·V (float32 accumulators).

    Arguments: ``qb [B, H, NQ, W]``, ``kb [B, HK, W, NK]`` (packed, padded: NQ, NK multiples of
    the blocks), ``v [B, HK, ≥nk, Dv]`` (``wl.dtype``, any strides on B, HK, N), ``coef [B, H]``,
    ``add`` (bias + mask, float32, size-1 broadcast dims, unit stride on keys; any 1-element
    tensor when ``wl.add_bcast`` is None), ``out [B, H, NQO, Dv]`` (the op's output itself: its
    true NQO ≤ NQ rows, in ``wl.dtype``, any strides on B, H, NQO), ``nk``, ``hd`` = D.
    """
    if wl.pv8:
        return (attention_pv8_lut_module if pv8_uses_lut(wl) else attention_pv8_module)(wl, knobs)
    knobs.check()
    bq, bk, ri, vl, dv, dtype = (knobs.block_q, knobs.block_k, knobs.rows, knobs.vector,
                                 wl.value_dim, wl.dtype)
    chunks = _value_chunks(dv, knobs.acc_cols)
    st = _stages(wl, knobs)

    @T.macro
    def chunk_load(r, col, width, acc, io):
        """A register buffer loaded with its rows and columns of the accumulators."""
        for ii in T.unroll(ri):
            for d in T.vectorized(width):
                r[ii, d] = acc[io * ri + ii, col + d]

    @T.macro
    def chunk_fma(r, col, width, S, v, b, hk, k0, io, j):
        """r += P[rows, j] · V[k0 + j, columns] (V cast to float32 as it is read)."""
        for ii in T.unroll(ri):
            for d in T.vectorized(width):
                r[ii, d] = r[ii, d] + S[io * ri + ii, j] * T.Cast("float32",
                                                                  v[b, hk, k0 + j, col + d])

    @T.macro
    def chunk_store(r, col, width, acc, io):
        """A register buffer written back to the accumulators."""
        for ii in T.unroll(ri):
            for d in T.vectorized(width):
                acc[io * ri + ii, col + d] = r[ii, d]

    @T.macro
    def pv_tile(acc, S, v, b, hk, k0, nk):
        """P·V of one key tile into ``acc``, ``rows`` query rows at a time through the register
        tile; the key loop stops at the true key count (no V row past it is read)."""
        for io in range(bq // ri):
            regs = _register_tile(ri, chunks, "float32")
            _each(chunk_load, regs, chunks, acc, io)
            for j in range(T.min(bk, nk - k0)):
                _each(chunk_fma, regs, chunks, S, v, b, hk, k0, io, j)
            _each(chunk_store, regs, chunks, acc, io)

    @T.prim_func
    def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, coef_h: T.handle, add_h: T.handle,
             out_h: T.handle, nk: T.int32, hd: T.int32):
        T.func_attr({"tir.noalias": True})
        B, H, HK, NQ, NK, NQO, NKV = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                      T.int32(), T.int32())
        qb = T.match_buffer(qb_h, (B, H, NQ, wl.words), "int32")
        kb = T.match_buffer(kb_h, (B, HK, wl.words, NK), "int32")
        v = T.match_buffer(v_h, (B, HK, NKV, dv), dtype,
                           strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        coef = T.match_buffer(coef_h, (B, H), "float32")
        AB, AH, AQ, NKA = T.int32(), T.int32(), T.int32(), T.int32()
        add = T.match_buffer(add_h, (AB, AH, AQ, NKA), "float32",
                             strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        out = T.match_buffer(out_h, (B, H, NQO, dv), dtype,
                             strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        for task in T.parallel(B * H * (NQ // bq)):
            b = T.Bind(task // (H * (NQ // bq)))
            h = T.Bind(task // (NQ // bq) % H)
            q0 = T.Bind(task % (NQ // bq) * bq)
            hk = T.Bind(h // (H // HK))
            c = T.Bind(coef[b, h])
            S = T.alloc_buffer((bq, bk), "float32")
            m = T.alloc_buffer((bq,), "float32")
            l = T.alloc_buffer((bq,), "float32")
            red = T.alloc_buffer((vl,), "float32")
            acc = T.alloc_buffer((bq, dv), "float32")
            for i in range(bq):
                m[i] = NEG_INF
                l[i] = T.float32(0)
                for d in T.vectorized(dv):
                    acc[i, d] = T.float32(0)
            for kt in range(_n_tiles(knobs, wl, NK, q0)):
                k0 = T.Bind(kt * bk)
                for i in range(bq):
                    row = T.Bind(q0 + i)
                    st.row_scores(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, True)
                    st.online_softmax(S, red, m, l, acc, i, True)
                pv_tile(acc, S, v, b, hk, k0, nk)
            st.store_rows(out, acc, l, None, c, b, h, hk, q0, NQO)

    return _module(main)


def attention_pv8_module(wl: AttentionWorkload, knobs: AttentionKnobs,
                         vnni: Optional[bool] = None) -> tvm.IRModule:
    """``pv_bits=8``: two passes; P quantized to u8 after normalisation, V given as s8.

    V arrives as int8 ``[B, HK, NK/4, DV16, 4]`` (4 consecutive keys interleaved per channel,
    the VNNI operand layout; DV16 = Dv rounded up to 16, ``quantize_v_module``) with
    ``vscale [B, HK, DV16]`` = 1 / (255 · (127/max|v| + 1e-6)); the other arguments as
    ``attention_module``'s (``v8, vscale`` in place of ``v``).
    """
    knobs.check()
    from .target import has_vnni

    vnni = has_vnni() if vnni is None else vnni
    bq, bk, vl, dv = knobs.block_q, knobs.block_k, knobs.vector, wl.dv16
    st = _stages(wl, knobs)

    @T.macro
    def quantize_row(P8, S, m, l, i):
        """Row i's P normalised by the final max and sum, as u8 levels 0 … 255."""
        muse = T.Bind(T.Select(m[i] == NEG_INF, T.float32(0), m[i]))
        pscale = T.Bind(T.Select(l[i] > T.float32(0), T.float32(255) / l[i], T.float32(0)))
        for jo in range(bk // vl):
            for jj in T.vectorized(vl):
                P8[i, jo * vl + jj] = _u8_level(fexp(S[i, jo * vl + jj] - muse) * pscale)

    @T.macro
    def plain_pv(acc, P8, v8, b, hk, k0):
        """u8 P × s8 V of one key tile in plain integer loops (no VNNI)."""
        for i in range(bq):
            for j in range(bk):
                for d in T.vectorized(dv):
                    acc[i, d] = acc[i, d] + T.Cast("int32", P8[i, j]) * T.Cast(
                        "int32", v8[b, hk, (k0 + j) // 4, d, (k0 + j) % 4])

    @T.prim_func
    def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, vscale_h: T.handle,
             coef_h: T.handle, add_h: T.handle, out_h: T.handle, nk: T.int32, hd: T.int32):
        T.func_attr({"tir.noalias": True})
        B, H, HK, NQ, NK, NQO = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                 T.int32())
        qb = T.match_buffer(qb_h, (B, H, NQ, wl.words), "int32")
        kb = T.match_buffer(kb_h, (B, HK, wl.words, NK), "int32")
        v8 = T.match_buffer(v_h, (B, HK, NK // 4, dv, 4), "int8")
        vscale = T.match_buffer(vscale_h, (B, HK, dv), "float32")
        coef = T.match_buffer(coef_h, (B, H), "float32")
        AB, AH, AQ, NKA = T.int32(), T.int32(), T.int32(), T.int32()
        add = T.match_buffer(add_h, (AB, AH, AQ, NKA), "float32",
                             strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        out = T.match_buffer(out_h, (B, H, NQO, wl.value_dim), wl.dtype,
                             strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        for task in T.parallel(B * H * (NQ // bq)):
            b = T.Bind(task // (H * (NQ // bq)))
            h = T.Bind(task // (NQ // bq) % H)
            q0 = T.Bind(task % (NQ // bq) * bq)
            hk = T.Bind(h // (H // HK))
            c = T.Bind(coef[b, h])
            S = T.alloc_buffer((bq, bk), "float32")
            m = T.alloc_buffer((bq,), "float32")
            l = T.alloc_buffer((bq,), "float32")
            red = T.alloc_buffer((vl,), "float32")
            acc = T.alloc_buffer((bq, dv), "int32")
            P8 = T.alloc_buffer((bq, bk), "uint8")
            for i in range(bq):
                m[i] = NEG_INF
                l[i] = T.float32(0)
                for d in T.vectorized(dv):
                    acc[i, d] = 0
            for kt in range(_n_tiles(knobs, wl, NK, q0)):  # pass 1: each row's max and sum
                k0 = T.Bind(kt * bk)
                for i in range(bq):
                    row = T.Bind(q0 + i)
                    st.row_scores(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, True)
                    st.online_softmax(S, red, m, l, acc, i, False)
            for kt in range(_n_tiles(knobs, wl, NK, q0)):  # pass 2: u8 P × s8 V
                k0 = T.Bind(kt * bk)
                for i in range(bq):
                    row = T.Bind(q0 + i)
                    st.row_scores(S, red, qb, kb, add, c, b, h, hk, row, i, k0, nk, hd, False)
                    quantize_row(P8, S, m, l, i)
                if vnni:
                    st.vnni_pv(acc, P8, 0, v8, b, hk, k0)
                else:
                    plain_pv(acc, P8, v8, b, hk, k0)
            st.store_rows(out, acc, l, vscale, c, b, h, hk, q0, NQO)

    return _module(main)


# --------------------------------------------------------------------------- 8-bit P/V, byte LUT
LUT_MAX_WORDS = 7  # the stored per-key value is popc ≤ D ≤ 224 < 255 (255 marks masked keys)
VPERMI2B = "llvm.x86.avx512.vpermi2var.qi.512"   # 128-entry byte table lookup, 64 lanes
VPERMPS = "llvm.x86.avx512.permvar.sf.512"       # 16-entry float table lookup, 16 lanes
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"        # u8×s8 dot products of 4, into int32 lanes
LUT_MAX_CAUSAL_NQ = 1 << 24  # query rows the causal table kernel serves (cpu_dispatch checks)
LUT_FEATURES = frozenset({"avx512f", "avx512bw", "avx512vbmi", "avx512vnni"})


def pv8_uses_lut(wl: AttentionWorkload, features: Optional[frozenset] = None) -> bool:
    """Whether a ``pv_bits=8`` workload runs the table kernel (``attention_pv8_lut_module``).

    Needs: no additive tensor (bias/mask values are not integers, so the exponentials no longer
    take D+1 values), D ≤ 224 (the per-key value must fit a byte), AVX-512 VBMI + VNNI.
    """
    from .target import cpu_features

    features = cpu_features() if features is None else features
    return (wl.pv8 and wl.add_bcast is None and wl.words <= LUT_MAX_WORDS
            and LUT_FEATURES <= features)


def attention_pv8_lut_module(wl: AttentionWorkload, knobs: AttentionKnobs) -> tvm.IRModule:
    """``pv_bits=8`` without bias/mask: scores computed once, no exponential per key.

    A score is ``c·(D − 2·popc)``, so a row's exponentials take at most D+1 values
    ``exp(−2|c|·k)``, k = popc − min popc (c ≥ 0; NOT q for c < 0). Per task (block_q
    rows × all keys): pass A stores each key's popc as a byte (a block_q × Nk byte tile, in
    L2) and the row's minimum; pass B sums the row's exponentials from two 16-entry float
    tables, builds the u8 table round(255·exp(−2|c|k)/Σ) of the normalised, quantized P and
    maps the row's bytes through it (vpermi2b); pass C accumulates u8 P × s8 V with vpdpbusd.
    Same arguments as ``attention_pv8_module`` (``add`` unread); needs ``pv8_uses_lut(wl)``.
    """
    knobs.check()
    if knobs.block_k % 64 or knobs.vector != 16:
        raise ValueError("the LUT kernel needs block_k a multiple of 64 and vector = 16")
    bq, bk, vl, dv, words, causal = (knobs.block_q, knobs.block_k, knobs.vector, wl.dv16,
                                     wl.words, wl.causal)
    tables = 1 if words * WORD_BITS <= 127 else 2
    st = _stages(wl, knobs)

    def full_tiles(ntiles, row, nk) -> tirx.PrimExpr:
        """Key tiles of row ``row`` that hold no masked key (padding or causal). The outer max
        keeps TVM's bound analysis from assuming negative counts (it then overflows int32)."""
        return T.max(T.min(ntiles, (T.min(nk, row + 1) if causal else nk) // bk), 0)

    def lookup(tabs: list, idx) -> tirx.PrimExpr:
        """The u8 table entry of each byte of ``idx`` (vpermi2b on 128-entry halves)."""
        half = [_llvm(VPERMI2B, "uint8x64", tabs[2 * t], idx, tabs[2 * t + 1])
                for t in range(tables)]
        other = half[1] if tables == 2 else T.broadcast(T.uint8(0), 64)
        return T.Select(idx < T.broadcast(T.uint8(128), 64), half[0], other)

    def exp_term(kk, TL, TH, pv, masked: bool) -> tirx.PrimExpr:
        """exp(−2|c|·k) for k = 16·k_hi + k_lo: the product of two 16-entry table lookups
        (vpermps); 0 for masked keys (byte 255) when ``masked``."""
        e = (_llvm(VPERMPS, "float32x16", TH, T.shift_right(kk, T.broadcast(4, 16)))
             * _llvm(VPERMPS, "float32x16", TL, T.bitwise_and(kk, T.broadcast(15, 16))))
        if masked:
            return T.Select(pv != T.broadcast(255, 16), e, T.broadcast(T.float32(0), 16))
        return e

    def key_value(qw, kb, b, hk, row, col, nk, masked: bool) -> tirx.PrimExpr:
        """popc(q' XOR k) of key ``col`` (q' = ±q, ``qw``); ``masked``: 255 for masked keys."""
        popc = _chain(operator.add, [T.popcount(qw[w] ^ kb[b, hk, w, col]) for w in range(words)])
        if not masked:
            return popc
        return T.Select(T.And(col < nk, col <= row) if causal else col < nk, popc, 255)

    @T.macro
    def key_bytes(P, vmin, qw, kb, b, hk, row, i, kt_lo, kt_hi, nk, masked):
        """P[i, keys of tiles kt_lo … kt_hi) = popc(q XOR k) as bytes (``masked``: 255 for
        masked keys), and the lane-wise minimum into vmin."""
        for kt in range(kt_lo, kt_hi):
            for jo in range(bk // vl):
                for jj in T.vectorized(vl):
                    col = T.Bind(kt * bk + jo * vl + jj)
                    val = T.Bind(key_value(qw, kb, b, hk, row, col, nk, masked))
                    P[i, col] = T.Cast("uint8", val)
                    vmin[jj] = T.min(vmin[jj], val)

    @T.macro
    def pass_a(P, lo, qw, vmin, qb, kb, b, h, hk, q0, ntiles, flip, nk):
        """Per row: each key's value as a byte, and the row's smallest value.

        The value is popc(q XOR k), or popc(NOT q XOR k) = 32·W − popc(q XOR k) when the row's
        coefficient is negative, so a smaller value always means a larger score; 255 marks
        masked keys (values are ≤ 32·W ≤ 224). Tiles without masked keys skip the mask test.
        """
        for i in range(bq):
            row = T.Bind(q0 + i)
            for w in range(words):
                qw[w] = T.Select(flip, T.bitwise_not(qb[b, h, row, w]), qb[b, h, row, w])
            for jj in T.vectorized(vl):
                vmin[jj] = 255
            nfull = T.Bind(full_tiles(ntiles, row, nk))
            key_bytes(P, vmin, qw, kb, b, hk, row, i, 0, nfull, nk, False)
            key_bytes(P, vmin, qw, kb, b, hk, row, i, nfull, ntiles, nk, True)
            lo[i] = _tree(T.min, [vmin[x] for x in range(vl)])

    @T.macro
    def exp_sum(red, P, TL, TH, low, i, kt_lo, kt_hi, masked):
        """red += exp(−2|c|·(byte − low)) over the keys of tiles kt_lo … kt_hi, 16 at a time."""
        for kt in range(kt_lo, kt_hi):
            for jo in range(bk // 16):
                pv = T.Bind(T.Cast("int32x16", P.vload([i, kt * bk + jo * 16], "uint8x16")))
                kk = T.Bind(pv - T.broadcast(low, 16))
                red[T.ramp(0, 1, 16)] = red.vload([0], "float32x16") + exp_term(kk, TL, TH, pv,
                                                                                 masked)

    @T.macro
    def pass_b(P, lo, tlo, thi, red, lut, ac, q0, ntiles, nk):
        """Per row: Σ exp over keys from two 16-entry float tables, the u8 table
        round(255·exp(−2|c|k)/Σ), and the row's bytes mapped through it (vpermi2b)."""
        for i in range(bq):
            low = T.Bind(lo[i])
            for t in T.vectorized(16):
                tlo[t] = fexp(T.float32(-2) * ac * T.Cast("float32", t))
                thi[t] = fexp(T.float32(-32) * ac * T.Cast("float32", t))
                red[t] = T.float32(0)
            TL = T.Bind(tlo.vload([0], "float32x16"))
            TH = T.Bind(thi.vload([0], "float32x16"))
            row = T.Bind(q0 + i)
            nfull = T.Bind(full_tiles(ntiles, row, nk))
            exp_sum(red, P, TL, TH, low, i, 0, nfull, False)
            exp_sum(red, P, TL, TH, low, i, nfull, ntiles, True)
            total = T.Bind(_tree(T.Add, [red[x] for x in range(16)]))
            pscale = T.Bind(T.Select(total > T.float32(0), T.float32(255) / total,
                                     T.float32(0)))
            span = T.Bind(WORD_BITS * words - low)
            for t in T.vectorized(128 * tables):
                lut[t] = T.Select(t <= span, _u8_level(
                    fexp(T.float32(-2) * ac * T.Cast("float32", t)) * pscale), T.uint8(0))
            tabs = [T.Bind(lut.vload([64 * x], "uint8x64")) for x in range(2 * tables)]
            for kt, jo in T.grid(ntiles, bk // 64):
                idx = T.Bind(P.vload([i, kt * bk + jo * 64], "uint8x64")
                             - T.broadcast(T.Cast("uint8", low), 64))
                P[i, T.ramp(kt * bk + jo * 64, 1, 64)] = lookup(tabs, idx)

    @T.prim_func
    def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, vscale_h: T.handle,
             coef_h: T.handle, add_h: T.handle, out_h: T.handle, nk: T.int32, hd: T.int32):
        T.func_attr({"tir.noalias": True})
        B, H, HK, NQ, NK, NQO = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                 T.int32())
        qb = T.match_buffer(qb_h, (B, H, NQ, words), "int32")
        kb = T.match_buffer(kb_h, (B, HK, words, NK), "int32")
        v8 = T.match_buffer(v_h, (B, HK, NK // 4, dv, 4), "int8")
        vscale = T.match_buffer(vscale_h, (B, HK, dv), "float32")
        coef = T.match_buffer(coef_h, (B, H), "float32")
        AB, AH, AQ, NKA = T.int32(), T.int32(), T.int32(), T.int32()
        T.match_buffer(add_h, (AB, AH, AQ, NKA), "float32",  # no additive tensor: unread
                       strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        out = T.match_buffer(out_h, (B, H, NQO, wl.value_dim), wl.dtype,
                             strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        for task in T.parallel(B * H * (NQ // bq)):
            b = T.Bind(task // (H * (NQ // bq)))
            h = T.Bind(task // (NQ // bq) % H)
            # causal: TVM's bound analysis overflows int32 on the tile count otherwise
            q0 = T.Bind(T.min(task % (NQ // bq) * bq, LUT_MAX_CAUSAL_NQ) if causal
                        else task % (NQ // bq) * bq)
            hk = T.Bind(h // (H // HK))
            c = T.Bind(coef[b, h])
            ac = T.Bind(T.fabs(c))
            flip = T.Bind(c < T.float32(0))
            ntiles = T.Bind(_n_tiles(knobs, wl, NK, q0))
            P = T.alloc_buffer((bq, NK), "uint8")
            lo = T.alloc_buffer((bq,), "int32")
            qw = T.alloc_buffer((words,), "int32")
            vmin = T.alloc_buffer((vl,), "int32")
            tlo = T.alloc_buffer((16,), "float32")
            thi = T.alloc_buffer((16,), "float32")
            red = T.alloc_buffer((16,), "float32")
            lut = T.alloc_buffer((128 * tables,), "uint8")
            acc = T.alloc_buffer((bq, dv), "int32")
            for i in range(bq):
                for d in T.vectorized(dv):
                    acc[i, d] = 0
            pass_a(P, lo, qw, vmin, qb, kb, b, h, hk, q0, ntiles, flip, nk)
            pass_b(P, lo, tlo, thi, red, lut, ac, q0, ntiles, nk)
            for kt in range(ntiles):  # pass C
                k0 = T.Bind(kt * bk)
                st.vnni_pv(acc, P, k0, v8, b, hk, k0)
            st.store_rows(out, acc, None, vscale, c, b, h, hk, q0, NQO)

    return _module(main)


def quantize_v_module(value_dim: int, dtype: str = "float32") -> tvm.IRModule:
    """V ``[B, HK, N, Dv]`` (``dtype``, any strides on B, HK, N; read in place, each element
    cast to float32) → s8 in the VNNI layout ``[B, HK, ⌈N/4⌉, Dv16, 4]`` (Dv16 = Dv rounded up
    to 16; keys past N and channels past Dv zero) and ``vscale [B, HK, Dv16]`` = 1 / (255·(inv
    + 1e-6)), inv = 127 / max|v| over tokens: ``reference.quantize_v_s8``'s rounding
    (``llvm.roundeven``: halves to even, as ``torch.round``; TVM's ``nearbyint`` rounds them
    away from zero) in two passes over V.
    """
    dv, dv16 = value_dim, -(-value_dim // 16) * 16

    @T.macro
    def store_key(v, v8, inv, b, hk, n4, r):
        """Key ``4·n4 + r`` of V as s8: ``roundeven(v · inv)`` per channel."""
        for d in T.vectorized(dv):
            v8[b, hk, n4, d, r] = T.Cast("int8", T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.roundeven"),
                T.Cast("float32", v[b, hk, n4 * 4 + r, d]) * inv[d], dtype="float32"))
        for d in T.serial(dv, dv16):
            v8[b, hk, n4, d, r] = T.int8(0)

    @T.prim_func
    def main(v_h: T.handle, v8_h: T.handle, vscale_h: T.handle):
        T.func_attr({"tir.noalias": True})
        B = T.int32()
        HK = T.int32()
        N = T.int32()
        N4 = T.int32()
        vs = (T.int32(), T.int32(), T.int32())
        v = T.match_buffer(v_h, (B, HK, N, dv), dtype, strides=(*vs, 1), align=ELEM_ALIGN)
        v8 = T.match_buffer(v8_h, (B, HK, N4, dv16, 4), "int8")
        vscale = T.match_buffer(vscale_h, (B, HK, dv16), "float32")
        for task in T.parallel(B * HK):
            b = T.Bind(task // HK)
            hk = T.Bind(task % HK)
            inv = T.alloc_buffer((dv16,), "float32")
            for d in T.vectorized(dv16):
                inv[d] = T.float32(0)
            for n in range(N):
                for d in T.vectorized(dv):
                    inv[d] = T.max(inv[d], T.fabs(T.Cast("float32", v[b, hk, n, d])))
            for d in T.vectorized(dv16):
                # as torch evaluates ``127.0 / amax``: reciprocal, then the product
                inv[d] = T.float32(1) / T.max(inv[d], T.float32(1e-12)) * T.float32(127)
                vscale[b, hk, d] = T.float32(1) / (T.float32(255) * (inv[d] + T.float32(1e-6)))
            for n4 in range(N // 4):
                for r in T.unroll(4):
                    store_key(v, v8, inv, b, hk, n4, r)
            for n4 in range(N // 4, N4):
                for r in T.unroll(4):
                    if n4 * 4 + r < N:
                        store_key(v, v8, inv, b, hk, n4, r)
                    else:
                        for d in T.vectorized(dv16):
                            v8[b, hk, n4, d, r] = T.int8(0)

    return _module(main)


def _module(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """The one-kernel IRModule ``tvm.compile`` gets (symbol ``main``)."""
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
