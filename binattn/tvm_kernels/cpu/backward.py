"""TVMScript (TIRx, target LLVM) of binattn's CPU backward kernel: the STE VJP of binary
attention with no N×N tensor.

What it does: ``backward_module(wl, knobs)`` builds the kernel of a :class:`BackwardWorkload`.
FlashAttention-2's backward without a saved log-sum-exp: one parallel task walks whole (b, q
head) units (several when a bias broadcast over batch or heads makes units share its gradient);
per unit and query block of ``block_q`` rows, over key tiles of ``block_k`` keys:

* pass 1 recomputes the scores from the packed bits, ``s = coef·(D − 2·popc(q XOR k)) + add``
  (``add`` = bias + mask, keys past ``nk`` and past the causal diagonal −inf) and the row max
  ``m`` and sum ``l`` online (the log-sum-exp); ``δ = Σ_j p_j·dp_j`` (= rowsum(dO∘O)) is an
  argument (``wl.delta``: the host passes it from the forward's output), else it is formed
  online here from ``dP = dO·Vᵀ``;
* pass 2 recomputes ``P = exp(s − m)/l`` and ``dP``, forms ``dS = P∘(dP − δ)``, adds it into the
  bias gradient (summed over the bias's broadcast dims), ``dV += Pᵀ·dO``,
  ``dK̂ += dSᵀ·Q̂``, ``dQ̂ += dS·K̂``, where Q̂ = ±qmul and K̂ = ±kmul (``qmul`` = softmax
  scale·s_q per (b, h)) are expanded from the sign bits in the kernel (K̂ and Vᵀ once per unit,
  Q̂ once per block), so the outputs are the gradients of the scores' operands times the scale.

Rows with no visible key get P = 0 (zero gradients), as the reference; a NaN score multiplier
makes every gradient of its unit NaN. Arguments: ``qb [B, H, NQ, W]``, ``kb [B, H, W, NK]``
(sign words per query head, k's transposed, padded: NQ to ``block_q``, NK to ``block_k``),
``qmul``, ``kmul``, ``coef [B, H]``, ``v [B, HK, ≥nk, Dv]`` and ``do [B, H, nq, Dv]`` (in
``wl.dtype``, read in place through any strides on B, H, N: no host copy; GQA's key/value head
of query head h is h // (H / HK)), ``add`` (bias + mask, broadcast dims of size 1, padded; 1
element if none), ``delta [B, H, NQ]`` (1 element unless ``wl.delta``), the float32 outputs
``dq̂ [B, H, nq, D]``, ``dk̂ [B, H, nk, D]``, ``dv [B, H, nk, Dv]`` (per query head, unpadded,
contiguous: the host sums GQA groups), ``dbias [nchunk, B|1, H|1, NQ|1, NK|1]`` (added into),
then the true key count ``nk``, ``hd`` = D, the true query count ``nq``, Dv and
``nslot``/``nchunk`` (the task split, :func:`unit_of`). Inside, a unit's V, each block's dO
rows and its dK̂/dV accumulators are float32 buffers padded with zeros (D and Dv to 16).

What it does not: the O(N·D) parts (scales, the STE window, mean|x|'s gradient, GQA sums:
``reference.backward_inputs`` / ``backward_outputs``), the bits' padding (the host wrapper,
``backward_dispatch``), bias tables (gathered there), top-N, soft binarizers, sinks, soft cap,
8-bit P/V.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tvm
from tvm.script import tirx as T

from ...schedules.cpu.backward import BackwardKnobs, tile_cols
from .kernels import ELEM_ALIGN, NEG_INF, _tree, fexp

#: part of every cache key: bump it when the kernel's arguments or math change
KERNEL_VERSION = 9


@dataclass(frozen=True)
class BackwardWorkload:
    """What a backward kernel is specialised for: words per row, padded D and Dv, causal, and
    the broadcast flags of the additive tensor over (B, H, Nq) (None: no bias or mask) and of
    the bias over (B, H, Nq, Nk) (None: no bias gradient); ``delta``: δ = rowsum(dO∘O) is an
    argument (else pass 1 forms it from dP); ``dtype``: that of v and dO, read in place."""

    words: int
    head_dim: int
    value_dim: int
    causal: bool = False
    add_bcast: Optional[tuple[bool, bool, bool]] = None
    bias_bcast: Optional[tuple[bool, bool, bool, bool]] = None
    delta: bool = False
    dtype: str = "float32"

    def tag(self) -> str:
        def flags(bcast: Optional[tuple[bool, ...]]) -> str:
            return "none" if bcast is None else "".join("1" if b else "n" for b in bcast)

        return (f"bwd{KERNEL_VERSION}_w{self.words}_d{self.head_dim}_dv{self.value_dim}"
                f"_c{int(self.causal)}"
                f"_add{flags(self.add_bcast)}_db{flags(self.bias_bcast)}_dl{int(self.delta)}"
                f"_{self.dtype}")

    def owns(self) -> tuple[bool, bool]:
        """Whether a unit owns its bias-gradient slot over batch and over heads."""
        if self.bias_bcast is None:
            return True, True
        return not self.bias_bcast[0], not self.bias_bcast[1]


def _keep(row, col, nk, causal: bool):
    """Whether key ``col`` is visible from query ``row`` (in range; causal: col ≤ row)."""
    return T.And(col < nk, col <= row) if causal else col < nk


def _popc(qb, kb, b, h, row, col, words: int):
    """Σ_w popc(q[row, w] XOR k[w, col]) as one expression."""
    return _tree(T.Add, [T.popcount(qb[b, h, row, w] ^ kb[b, h, w, col]) for w in range(words)])


def backward_module(wl: BackwardWorkload, knobs: BackwardKnobs) -> tvm.IRModule:
    """The backward kernel of ``wl`` (arguments in the module docstring and
    ``backward_dispatch.binary_attention_backward``)."""
    knobs.check(wl.head_dim, wl.value_dim)
    words, dp, dvp, causal = wl.words, wl.head_dim, wl.value_dim, wl.causal
    bq, bk, ri, vl, ck = knobs.block_q, knobs.block_k, knobs.rows, knobs.vector, knobs.cols
    cq, cv = tile_cols(dp, knobs), tile_cols(dvp, knobs)
    has_add, has_dbias = wl.add_bcast is not None, wl.bias_bcast is not None
    ab, ah, aq = (int(not f) for f in (wl.add_bcast or (True,) * 3))
    gb, gh, gq, gk = (int(not f) for f in (wl.bias_bcast or (True,) * 4))
    own_b, own_h = wl.owns()
    given_delta = wl.delta

    @T.macro
    def scores(S, qb, kb, add, c, b, h, q0, k0, nk, hd):
        """S[i, j]: the score of query q0+i and key k0+j, −inf where masked."""
        for i in range(bq):
            for jo in range(bk // vl):
                for jj in T.vectorized(vl):
                    col = T.Bind(k0 + jo * vl + jj)
                    raw = T.Bind(c * T.Cast("float32", hd - 2 * _popc(qb, kb, b, h, q0 + i, col,
                                                                        words)))
                    if has_add:
                        S[i, jo * vl + jj] = T.Select(
                            _keep(q0 + i, col, nk, causal),
                            raw + add[b * ab, h * ah, (q0 + i) * aq, col], NEG_INF)
                    else:
                        S[i, jo * vl + jj] = T.Select(_keep(q0 + i, col, nk, causal), raw,
                                                      NEG_INF)

    @T.macro
    def dp_tile(Dp, dob, vt, k0, nk):
        """Dp[i, j] = Σ_d dO[q0+i, d]·V[k0+j, d] (register tile rows × ck keys; ``dob``: the
        block's dO rows), key columns up to the true key count (P is 0 past it, so what the
        tile holds there is never used)."""
        for io in range(bq // ri):
            for jo in range(T.min(bk // ck, (nk - k0 + ck - 1) // ck)):
                r = T.alloc_buffer((ri, ck), "float32")
                for ii in T.unroll(ri):
                    for jj in T.vectorized(ck):
                        r[ii, jj] = T.float32(0)
                for d in range(dvp):
                    for ii in T.unroll(ri):
                        for jj in T.vectorized(ck):
                            r[ii, jj] = r[ii, jj] + dob[io * ri + ii, d] * vt[
                                d, k0 + jo * ck + jj]
                for ii in T.unroll(ri):
                    for jj in T.vectorized(ck):
                        Dp[io * ri + ii, jo * ck + jj] = r[ii, jj]

    @T.macro
    def online_stats(S, Dp, m, l, dl, red, i):
        """Row i of pass 1: running max m, sum l (and δ-numerator dl unless δ is given),
        rescaled to the new max."""
        for jj in T.vectorized(vl):
            red[jj] = NEG_INF
        for jo in range(bk // vl):
            for jj in T.vectorized(vl):
                red[jj] = T.max(red[jj], S[i, jo * vl + jj])
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
        if not given_delta:
            for jj in T.vectorized(vl):
                red[jj] = T.float32(0)
            for jo in range(bk // vl):
                for jj in T.vectorized(vl):
                    red[jj] = red[jj] + S[i, jo * vl + jj] * Dp[i, jo * vl + jj]
            dl[i] = dl[i] * alpha + _tree(T.Add, [red[x] for x in range(vl)])
        m[i] = mnew

    @T.macro
    def grad_scores(S, Dp, mu, linv, delta, dbias, chunk, b, h, q0, k0):
        """P over S (exp(s − m)/l), dS = P∘(dP − δ) over Dp, dS into the bias gradient."""
        for i in range(bq):
            for jo in range(bk // vl):
                for jj in T.vectorized(vl):
                    S[i, jo * vl + jj] = fexp(S[i, jo * vl + jj] - mu[i]) * linv[i]
                    Dp[i, jo * vl + jj] = S[i, jo * vl + jj] * (Dp[i, jo * vl + jj] - delta[i])
            if has_dbias:
                if gk == 1:
                    for jo in range(bk // vl):
                        for jj in T.vectorized(vl):
                            dbias[chunk, b * gb, h * gh, (q0 + i) * gq, k0 + jo * vl + jj] = (
                                dbias[chunk, b * gb, h * gh, (q0 + i) * gq, k0 + jo * vl + jj]
                                + Dp[i, jo * vl + jj])
                else:
                    for j in range(bk):
                        dbias[chunk, b * gb, h * gh, (q0 + i) * gq, 0] = (
                            dbias[chunk, b * gb, h * gh, (q0 + i) * gq, 0] + Dp[i, j])

    @T.macro
    def key_grads(out, A, X, q0, k0, nq, nk, dim, cols):
        """out[k0+j, :] += Σ_i A[i, j]·X[i, :] (the unit's dV from P and dO, dK̂ from dS and
        Q̂; X: the block's rows), over the block's true rows and the tile's true keys."""
        for jo in range(T.min(bk // ri, (nk - k0 + ri - 1) // ri)):
            for dc in range(dim // cols):
                r = T.alloc_buffer((ri, cols), "float32")
                for jj in T.unroll(ri):
                    for d in T.vectorized(cols):
                        r[jj, d] = out[k0 + jo * ri + jj, dc * cols + d]
                for i in range(T.min(bq, nq - q0)):
                    for jj in T.unroll(ri):
                        for d in T.vectorized(cols):
                            r[jj, d] = r[jj, d] + A[i, jo * ri + jj] * X[i, dc * cols + d]
                for jj in T.unroll(ri):
                    for d in T.vectorized(cols):
                        out[k0 + jo * ri + jj, dc * cols + d] = r[jj, d]

    @T.macro
    def signs(X, bits, b, h, row0, rows, mul, hd, keys):
        """X[r, d] = ±mul by sign bit d of row row0+r (``keys``: of k's transposed words), 0
        past D: the block's rows of Q̂ or K̂ times the softmax scale."""
        for r in range(rows):
            for d in range(dp):
                if keys:
                    X[r, d] = T.Select(d < hd, T.Select(T.bitwise_and(T.shift_right(
                        bits[b, h, d // 32, row0 + r], d % 32), 1) == 1, mul, -mul), T.float32(0))
                else:
                    X[r, d] = T.Select(d < hd, T.Select(T.bitwise_and(T.shift_right(
                        bits[b, h, row0 + r, d // 32], d % 32), 1) == 1, mul, -mul), T.float32(0))

    @T.macro
    def query_grads(dqacc, Dp, Ks, q0, k0, nq, nk):
        """dqacc[i, :] += Σ_j dS[i, j]·K̂[k0+j, :] over the block's true rows (in groups of
        ``rows``) and the tile's true keys."""
        for io in range(T.min(bq // ri, (nq - q0 + ri - 1) // ri)):
            for dc in range(dp // cq):
                r = T.alloc_buffer((ri, cq), "float32")
                for ii in T.unroll(ri):
                    for d in T.vectorized(cq):
                        r[ii, d] = dqacc[io * ri + ii, dc * cq + d]
                for j in range(T.min(bk, nk - k0)):
                    for ii in T.unroll(ri):
                        for d in T.vectorized(cq):
                            r[ii, d] = r[ii, d] + Dp[io * ri + ii, j] * Ks[k0 + j, dc * cq + d]
                for ii in T.unroll(ri):
                    for d in T.vectorized(cq):
                        dqacc[io * ri + ii, dc * cq + d] = r[ii, d]

    @T.macro
    def values(vt, v, b, hk, nk, dvr, NK):
        """vt[d, j] = V[j, d] of the unit's key head in float32, zero past nk keys and Dv."""
        for j in range(NK):
            for d in range(dvp):
                vt[d, j] = T.if_then_else(T.And(j < nk, d < dvr),
                                          T.Cast("float32", v[b, hk, j, d]), T.float32(0))

    @T.macro
    def block_grads(dob, do, b, h, q0, nq, dvr):
        """dob[i, d] = dO[q0+i, d] in float32, zero past nq rows and Dv (read in place)."""
        for i in range(bq):
            for d in range(dvp):
                dob[i, d] = T.if_then_else(T.And(q0 + i < nq, d < dvr),
                                           T.Cast("float32", do[b, h, q0 + i, d]), T.float32(0))

    @T.macro
    def store_keys(out, acc, b, h, nk, width):
        """The unit's first nk key rows and ``width`` columns of ``acc`` into ``out``."""
        for j in range(nk):
            for d in range(width):
                out[b, h, j, d] = acc[j, d]

    @T.macro
    def unit(qb, kb, qmul, kmul, v, do, coef, add, dlt, dq, dk, dv, dbias, chunk, b, h, group,
             nk, nq, hd, dvr, NQ, NK):
        """Every gradient of one (b, q head), query block by query block (its key/value head:
        h // group)."""
        S = T.alloc_buffer((bq, bk), "float32")
        Dp = T.alloc_buffer((bq, bk), "float32")
        m = T.alloc_buffer((bq,), "float32")
        l = T.alloc_buffer((bq,), "float32")
        dl = T.alloc_buffer((bq,), "float32")
        mu = T.alloc_buffer((bq,), "float32")
        linv = T.alloc_buffer((bq,), "float32")
        delta = T.alloc_buffer((bq,), "float32")
        red = T.alloc_buffer((vl,), "float32")
        dqacc = T.alloc_buffer((bq, dp), "float32")
        Qs = T.alloc_buffer((bq, dp), "float32")
        Ks = T.alloc_buffer((NK, dp), "float32")
        vt = T.alloc_buffer((dvp, NK), "float32")
        dob = T.alloc_buffer((bq, dvp), "float32")
        dka = T.alloc_buffer((NK, dp), "float32")
        dva = T.alloc_buffer((NK, dvp), "float32")
        c = T.Bind(coef[b, h])
        # NaN where the score multiplier is not finite (the host made ±Inf NaN): all grads NaN
        poison = T.Bind(T.Select(T.isnan(c), c, T.float32(0)))
        signs(Ks, kb, b, h, 0, NK, kmul[b, h], hd, True)
        values(vt, v, b, h // group, nk, dvr, NK)
        for i in range(bq):   # dp_tile leaves the key columns past nk as they are: finite
            for j in T.vectorized(bk):
                Dp[i, j] = T.float32(0)
        for j in range(NK):
            for d in T.vectorized(dp):
                dka[j, d] = poison
            for d in T.vectorized(dvp):
                dva[j, d] = poison
        for qt in range(NQ // bq):
            q0 = T.Bind(qt * bq)
            if causal:
                ntiles = T.Bind(T.min(NK // bk, (q0 + bq + bk - 1) // bk))
            else:
                ntiles = T.Bind(NK // bk)
            for i in range(bq):
                m[i] = NEG_INF
                l[i] = T.float32(0)
                dl[i] = T.float32(0)
            block_grads(dob, do, b, h, q0, nq, dvr)
            for kt in range(ntiles):
                scores(S, qb, kb, add, c, b, h, q0, kt * bk, nk, hd)
                if not given_delta:
                    dp_tile(Dp, dob, vt, kt * bk, nk)
                for i in range(bq):
                    online_stats(S, Dp, m, l, dl, red, i)
            for i in range(bq):
                mu[i] = T.Select(m[i] == NEG_INF, T.float32(0), m[i])
                linv[i] = T.Select(l[i] > T.float32(0), T.float32(1) / l[i], T.float32(0))
                if given_delta:
                    delta[i] = dlt[b, h, q0 + i]
                else:
                    delta[i] = dl[i] * linv[i]
                for d in T.vectorized(dp):
                    dqacc[i, d] = poison
            signs(Qs, qb, b, h, q0, bq, qmul[b, h], hd, False)
            for kt in range(ntiles):
                scores(S, qb, kb, add, c, b, h, q0, kt * bk, nk, hd)
                dp_tile(Dp, dob, vt, kt * bk, nk)
                grad_scores(S, Dp, mu, linv, delta, dbias, chunk, b, h, q0, kt * bk)
                key_grads(dva, S, dob, q0, kt * bk, nq, nk, dvp, cv)
                key_grads(dka, Dp, Qs, q0, kt * bk, nq, nk, dp, cq)
                query_grads(dqacc, Dp, Ks, q0, kt * bk, nq, nk)
            for i in range(T.min(bq, nq - q0)):
                for d in range(hd):
                    dq[b, h, q0 + i, d] = dqacc[i, d]
        store_keys(dk, dka, b, h, nk, hd)
        store_keys(dv, dva, b, h, nk, dvr)

    @T.prim_func
    def main(qb_h: T.handle, kb_h: T.handle, qm_h: T.handle, km_h: T.handle, v_h: T.handle,
             do_h: T.handle, coef_h: T.handle, add_h: T.handle, dlt_h: T.handle, dq_h: T.handle,
             dk_h: T.handle, dv_h: T.handle, dbias_h: T.handle, nk: T.int32, hd: T.int32,
             nq: T.int32, dvr: T.int32, nslot: T.int32, nchunk: T.int32):
        T.func_attr({"tir.noalias": True})
        B = T.int32()
        H = T.int32()
        NQ = T.int32()
        NK = T.int32()
        AB = T.int32()
        AH = T.int32()
        AQ = T.int32()
        AK = T.int32()
        DB = T.int32()
        DH = T.int32()
        DQ = T.int32()
        GC = T.int32()
        GB = T.int32()
        GH = T.int32()
        GQ = T.int32()
        GK = T.int32()
        qb = T.match_buffer(qb_h, (B, H, NQ, words), "int32")
        kb = T.match_buffer(kb_h, (B, H, words, NK), "int32")
        qmul = T.match_buffer(qm_h, (B, H), "float32")
        kmul = T.match_buffer(km_h, (B, H), "float32")
        HK, NKV, NQO, DV, HDQ, NKO = (T.int32(), T.int32(), T.int32(), T.int32(), T.int32(),
                                      T.int32())
        v = T.match_buffer(v_h, (B, HK, NKV, DV), wl.dtype,
                           strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        do = T.match_buffer(do_h, (B, H, NQO, DV), wl.dtype,
                            strides=(T.int32(), T.int32(), T.int32(), 1), align=ELEM_ALIGN)
        coef = T.match_buffer(coef_h, (B, H), "float32")
        add = T.match_buffer(add_h, (AB, AH, AQ, AK), "float32")
        dlt = T.match_buffer(dlt_h, (DB, DH, DQ), "float32")
        dq = T.match_buffer(dq_h, (B, H, NQO, HDQ), "float32")
        dk = T.match_buffer(dk_h, (B, H, NKO, HDQ), "float32")
        dv = T.match_buffer(dv_h, (B, H, NKO, DV), "float32")
        dbias = T.match_buffer(dbias_h, (GC, GB, GH, GQ, GK), "float32")
        group = T.Bind(H // HK)   # query heads per key/value head (GQA)
        for task in T.parallel(nslot * nchunk):
            slot = T.Bind(task % nslot)
            chunk = T.Bind(task // nslot)
            reps = T.Bind(B * H // nslot)
            for rep in range(chunk * reps // nchunk, (chunk + 1) * reps // nchunk):
                if own_b and own_h:
                    unit(qb, kb, qmul, kmul, v, do, coef, add, dlt, dq, dk, dv, dbias, chunk,
                         slot // H, slot % H, group, nk, nq, hd, dvr, NQ, NK)
                elif own_h:
                    unit(qb, kb, qmul, kmul, v, do, coef, add, dlt, dq, dk, dv, dbias, chunk,
                         rep, slot, group, nk, nq, hd, dvr, NQ, NK)
                elif own_b:
                    unit(qb, kb, qmul, kmul, v, do, coef, add, dlt, dq, dk, dv, dbias, chunk,
                         slot, rep, group, nk, nq, hd, dvr, NQ, NK)
                else:
                    unit(qb, kb, qmul, kmul, v, do, coef, add, dlt, dq, dk, dv, dbias, chunk,
                         rep // H, rep % H, group, nk, nq, hd, dvr, NQ, NK)

    return tvm.IRModule({"main": main.with_attr("global_symbol", "main")})


def unit_of(wl: BackwardWorkload, batch: int, heads: int, threads: int) -> tuple[int, int]:
    """``(nslot, nchunk)``: the kernel runs ``nslot·nchunk`` tasks; units sharing a bias-gradient
    slot (a bias broadcast over batch and/or heads) are split into ``nchunk`` chunks, each with
    its own copy of the gradient (the host sums them), enough to keep ``threads`` busy."""
    own_b, own_h = wl.owns()
    nslot = (batch if own_b else 1) * (heads if own_h else 1)
    reps = batch * heads // nslot
    nchunk = 1 if nslot >= 2 * threads else min(reps, -(-2 * threads // nslot))
    return nslot, max(nchunk, 1)
