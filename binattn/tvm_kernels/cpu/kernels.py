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

Style: ``sign_pack_module`` and ``quantize_v_module`` are ``@T.prim_func`` kernels, as the CUDA
ones. The three attention kernels are still TVMScript text built with f-strings: their P·V
register tile is a workload-dependent number of separate small buffers (``r0`` … ``rK``: one
per ``acc_cols`` value columns or 16 VNNI lanes, each under TVM's 1 KiB stack-allocation limit
so that LLVM keeps it in registers) and their signature gains an argument when there is an
additive tensor; TVMScript has no parse-time loop to emit a varying number of allocations.

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
def sign_pack_module(words: int, dtype: str = "float32") -> tvm.IRModule:
    """``x [B, H, N, D]`` (``dtype``, any strides on B, H, N, unit stride on D) → words
    ``[B, H, N, W]`` int32 (any strides: the attention kernels' key layout ``[.., W, N]`` is a
    transposed view), row popcounts ``[B, H, N]`` int32 and row sums of ``|x|`` ``[B, H, N]``
    float32 (so the per-(b, h) mean|x| scale comes from the same pass). Each element is cast
    to float32 as it is read: no converted copy of x.

    D is read from the input's shape at run time; one kernel serves every D with W words.
    """

    @T.prim_func
    def main(x_h: T.handle, bits_h: T.handle, pops_h: T.handle, abs_h: T.handle):
        T.func_attr({"tir.noalias": True})
        B = T.int32()
        H = T.int32()
        N = T.int32()
        D = T.int32()
        xs = (T.int32(), T.int32(), T.int32())
        ws = (T.int32(), T.int32(), T.int32(), T.int32())
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
                    for w in range(words):
                        word[w] = 0
                        for j in range(32):
                            if w * 32 + j < D:
                                word[w] = word[w] | T.shift_left(T.Cast(
                                    "int32", T.Cast("float32", x[b, h, n, w * 32 + j])
                                    >= T.float32(0)), j)
                        bits[b, h, n, w] = word[w]
                    pops[b, h, n] = _chain(operator.add,
                                           [T.popcount(word[w]) for w in range(words)])
                    for l in T.vectorized(16):
                        acc[l] = T.float32(0)
                    for d in range(D):
                        acc[d % 16] = acc[d % 16] + T.fabs(T.Cast("float32", x[b, h, n, d]))
                    absx[b, h, n] = _tree(T.Add, [acc[i] for i in range(16)])

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


def _score_expr(wl: AttentionWorkload, row: str, col: str, clamp: bool = False) -> str:
    """TVMScript text of the float score of (row, col) inside a key tile, masked. The additive
    tensor has the true Nq rows and Nk columns: a padded query row reads its last row, and
    with ``clamp`` (a tile that reaches past Nk) a padded key its last column."""
    popc = " + ".join(f"T.popcount(qb[b, h, {row}, {w}] ^ kb[b, hk, {w}, {col}])"
                      for w in range(wl.words))
    expr = f"c * T.Cast(\"float32\", hd - 2 * ({popc}))"
    if wl.add_bcast is not None:
        bb, hb, qb = wl.add_bcast
        add_col = f"T.min({col}, NKA - 1)" if clamp else col
        expr += (f" + add[{'0' if bb else 'b'}, {'0' if hb else 'h'}, "
                 f"{'0' if qb else f'T.min({row}, NQO - 1)'}, {add_col}]")
    keep = f"{col} < nk"
    if wl.causal:
        keep = f"T.And({keep}, {col} <= {row})"
    return f"T.Select({keep}, {expr}, NEG_INF)"


def _params(wl: AttentionWorkload) -> tuple[str, str]:
    """Parameter list and buffer declarations shared by the attention kernels.

    ``qb``/``kb`` are padded (NQ, NK multiples of the blocks); ``out`` is the op's output
    itself: its true NQO ≤ NQ rows, Dv columns, in ``wl.dtype``, any strides on B, H, NQO.
    """
    add_param = ", add_h: T.handle" if wl.add_bcast is not None else ""
    decl = f'''
    T.func_attr({{"tir.noalias": True}})
    B = T.int32(); H = T.int32(); HK = T.int32(); NQ = T.int32(); NK = T.int32()
    NQO = T.int32(); os0 = T.int32(); os1 = T.int32(); os2 = T.int32()
    qb = T.match_buffer(qb_h, (B, H, NQ, {wl.words}), "int32")
    kb = T.match_buffer(kb_h, (B, HK, {wl.words}, NK), "int32")
    coef = T.match_buffer(coef_h, (B, H), "float32")
    out = T.match_buffer(out_h, (B, H, NQO, {wl.value_dim}), "{wl.dtype}",
                         strides=(os0, os1, os2, 1), align={ELEM_ALIGN})'''
    if wl.add_bcast is not None:
        bb, hb, qb = wl.add_bcast
        dims = ", ".join(["1" if bb else "B", "1" if hb else "H", "1" if qb else "NQO", "NKA"])
        decl += (f'\n    NKA = T.int32(); as0 = T.int32(); as1 = T.int32(); as2 = T.int32()'
                 f'\n    add = T.match_buffer(add_h, ({dims}), "float32", '
                 f'strides=(as0, as1, as2, 1), align={ELEM_ALIGN})')
    return add_param, decl


def _fill_scores(knobs: AttentionKnobs, wl: AttentionWorkload, then: str = "") -> str:
    """Row ``i``'s masked scores of a key tile into ``S[i, :]`` (``then``: a line run per
    vector after the store). With an additive tensor, tiles inside Nk read it with unit-stride
    vector loads and the tile that reaches past Nk clamps its column (no read past Nk)."""
    vl, bk = knobs.vector, knobs.block_k

    def fill(clamp: bool) -> str:
        score = _score_expr(wl, "row", f"k0 + jo * {vl} + jj", clamp)
        return (f"for jo in range({bk // vl}):\n    for jj in T.vectorized({vl}):\n"
                f"        S[i, jo * {vl} + jj] = {score}" + (f"\n        {then}" if then else ""))

    if wl.add_bcast is None:
        return fill(False)
    return (f"if k0 + {bk} <= nk:\n{_indent(fill(False), '    ')}\n"
            f"else:\n{_indent(fill(True), '    ')}")


def _row_softmax_step(knobs: AttentionKnobs, wl: AttentionWorkload, indent: str,
                      update_acc: bool) -> str:
    """Scores of one row of a key tile, running max/sum update, P written over S."""
    vl, bk = knobs.vector, knobs.block_k
    lines = f'''
for i in range({knobs.block_q}):
    row = T.Bind(q0 + i)
    for jj in T.vectorized({vl}):
        red[jj] = NEG_INF
{_indent(_fill_scores(knobs, wl, f"red[jj] = T.max(red[jj], S[i, jo * {vl} + jj])"), "    ")}
    mnew = T.Bind(T.max(m[i], {_tree("T.max", [f"red[{x}]" for x in range(vl)])}))
    muse = T.Bind(T.Select(mnew == NEG_INF, T.float32(0), mnew))
    alpha = T.Bind(fexp(m[i] - muse))
    for jj in T.vectorized({vl}):
        red[jj] = T.float32(0)
    for jo in range({bk // vl}):
        for jj in T.vectorized({vl}):
            S[i, jo * {vl} + jj] = fexp(S[i, jo * {vl} + jj] - muse)
            red[jj] = red[jj] + S[i, jo * {vl} + jj]
    l[i] = l[i] * alpha + {_tree("T.Add", [f"red[{x}]" for x in range(vl)])}
    m[i] = mnew'''
    if update_acc:
        lines += f'''
    for d in T.vectorized({wl.value_dim}):
        acc[i, d] = acc[i, d] * alpha'''
    return _indent(lines, indent)


def _tree(op, items: list):
    """Balanced reduction op(op(a, b), op(c, d)) …: TVMScript text when ``op`` is its name
    (``"T.Add"``), else the expression, ``op`` called on the items (``T.Add``)."""
    pair = (lambda a, b: f"{op}({a}, {b})") if isinstance(op, str) else op
    while len(items) > 1:
        items = [pair(items[i], items[i + 1]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


def _chain(op, items: list):
    """Left-to-right reduction op(op(a, b), c) … (as ``a + b + c`` written out)."""
    return functools.reduce(op, items)


def _indent(text: str, indent: str) -> str:
    return "\n".join(indent + line if line.strip() else line for line in text.splitlines())


def _tile_loop_header(knobs: AttentionKnobs, wl: AttentionWorkload) -> str:
    """The key-tile loop bound: all tiles, or (causal) those up to this q block's diagonal."""
    tiles = f"NK // {knobs.block_k}"
    if wl.causal:
        tiles = f"T.min({tiles}, (q0 + {knobs.block_q} + {knobs.block_k - 1}) // {knobs.block_k})"
    return tiles


def _task_prologue(knobs: AttentionKnobs) -> str:
    bq = knobs.block_q
    return f'''
        b = T.Bind(task // (H * (NQ // {bq})))
        h = T.Bind(task // (NQ // {bq}) % H)
        q0 = T.Bind(task % (NQ // {bq}) * {bq})
        hk = T.Bind(h // (H // HK))
        c = T.Bind(coef[b, h])
        S = T.alloc_buffer(({bq}, {knobs.block_k}), "float32")
        m = T.alloc_buffer(({bq},), "float32")
        l = T.alloc_buffer(({bq},), "float32")
        red = T.alloc_buffer(({knobs.vector},), "float32")
        for i in range({bq}):
            m[i] = NEG_INF
            l[i] = T.float32(0)'''


def _value_chunks(value_dim: int, cols: int) -> list[tuple[int, int]]:
    """(first column, width) of the P·V register buffers: ``cols`` wide, the last one the rest."""
    return [(c, min(cols, value_dim - c)) for c in range(0, value_dim, cols)]


def _fp32_pv(knobs: AttentionKnobs, wl: AttentionWorkload) -> str:
    """P·V of one key tile into ``acc``: ``rows`` × Dv accumulators kept in registers as
    separate small buffers (each under TVM's 1 KiB stack-allocation limit, so LLVM promotes
    them). V is read in its dtype through its strides, each element cast to float32; the key
    loop stops at the true key count (no V row past it is read)."""
    bq, bk, ri = knobs.block_q, knobs.block_k, knobs.rows
    chunks = list(enumerate(_value_chunks(wl.value_dim, knobs.acc_cols)))

    def each(body: str) -> str:
        return "\n".join(f"for ii in T.unroll({ri}):\n    for d in T.vectorized({w}):\n"
                         f"        {body.format(x=x, c=c)}" for x, (c, w) in chunks)

    regs = "\n".join(f"r{x} = T.alloc_buffer(({ri}, {w}), \"float32\")" for x, (_, w) in chunks)
    load = each("r{x}[ii, d] = acc[io * %d + ii, {c} + d]" % ri)
    fma = each("r{x}[ii, d] = r{x}[ii, d] + S[io * %d + ii, j] * "
               "T.Cast(\"float32\", v[b, hk, k0 + j, {c} + d])" % ri)
    store = each("acc[io * %d + ii, {c} + d] = r{x}[ii, d]" % ri)
    return (f"for io in range({bq // ri}):\n{_indent(regs, '    ')}\n{_indent(load, '    ')}\n"
            f"    for j in range(T.min({bk}, nk - k0)):\n{_indent(fma, '        ')}\n"
            f"{_indent(store, '    ')}")


_PV8_OUT = "T.Cast(\"float32\", acc[i, d]) * vscale[b, hk, d]"  # 8-bit kernels' output


def _store_rows(knobs: AttentionKnobs, wl: AttentionWorkload, value: str, setup: str = "") -> str:
    """Write the task's true rows (``q0 + i < NQO``) into ``out``, cast to its dtype: ``value``
    is the float32 text of column ``d`` of row ``i``, after ``setup`` (one line, per row). A
    NaN coefficient ``c`` (a NaN/Inf in this (b, h)'s q or k) writes NaN, as the reference
    gives: the running max skips NaN scores, so the rows could otherwise come out finite."""
    setup = f"\n                {setup}" if setup else ""
    return f'''
        for i in range({knobs.block_q}):
            if q0 + i < NQO:{setup}
                for d in T.vectorized({wl.value_dim}):
                    out[b, h, q0 + i, d] = T.Cast("{wl.dtype}", T.Select(T.isnan(c), c,
                                                                         {value}))'''


def attention_module(wl: AttentionWorkload, knobs: AttentionKnobs) -> tvm.IRModule:
    """Fused binary attention with full-precision P·V (float32 accumulators)."""
    if wl.pv8:
        return (attention_pv8_lut_module if pv8_uses_lut(wl) else attention_pv8_module)(wl, knobs)
    knobs.check()
    bq, bk, dv = knobs.block_q, knobs.block_k, wl.value_dim
    add_param, decl = _params(wl)
    store = _store_rows(knobs, wl, "acc[i, d] * inv", "inv = T.Bind(T.Select(l[i] > "
                        "T.float32(0), T.float32(1) / l[i], T.float32(0)))")
    source = f'''
@T.prim_func
def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, coef_h: T.handle{add_param},
         out_h: T.handle, nk: T.int32, hd: T.int32):{decl}
    NKV = T.int32(); vs0 = T.int32(); vs1 = T.int32(); vs2 = T.int32()
    v = T.match_buffer(v_h, (B, HK, NKV, {dv}), "{wl.dtype}", strides=(vs0, vs1, vs2, 1),
                       align={ELEM_ALIGN})
    for task in T.parallel(B * H * (NQ // {bq})):{_task_prologue(knobs)}
        acc = T.alloc_buffer(({bq}, {dv}), "float32")
        for i in range({bq}):
            for d in T.vectorized({dv}):
                acc[i, d] = T.float32(0)
        for kt in range({_tile_loop_header(knobs, wl)}):
            k0 = T.Bind(kt * {bk})
{_row_softmax_step(knobs, wl, "            ", update_acc=True)}
{_indent(_fp32_pv(knobs, wl), "            ")}{store}
'''
    return _parse(source)


def _u8_level(scaled: str) -> str:
    """TVMScript text of min(round(x), 255) as uint8 for x = 255·p ≥ 0, halves to even like
    ``reference.quantize_probs_u8`` (torch.round): uniform rows hit exact halves (255/102)."""
    rounded = _intrin("llvm.roundeven", "float32", scaled)
    return f"T.Cast(\"uint8\", T.min({rounded}, T.float32(255)))"


def attention_pv8_module(wl: AttentionWorkload, knobs: AttentionKnobs,
                         vnni: Optional[bool] = None) -> tvm.IRModule:
    """``pv_bits=8``: two passes; P quantized to u8 after normalisation, V given as s8.

    V arrives as int8 ``[B, HK, NK/4, DV16, 4]`` (4 consecutive keys interleaved per channel,
    the VNNI operand layout; DV16 = Dv rounded up to 16, ``quantize_v_module``) with
    ``vscale [B, HK, DV16]`` = 1 / (255 · (127/max|v| + 1e-6)).
    """
    knobs.check()
    from .target import has_vnni

    vnni = has_vnni() if vnni is None else vnni
    bq, bk, dv = knobs.block_q, knobs.block_k, wl.dv16
    add_param, decl = _params(wl)
    if vnni:
        pv = _vnni_pv(knobs, dv, "P8", "0")
    else:
        pv = (f"for i in range({bq}):\n    for j in range({bk}):\n"
              f"        for d in T.vectorized({dv}):\n"
              f"            acc[i, d] = acc[i, d] + T.Cast(\"int32\", P8[i, j]) * "
              f"T.Cast(\"int32\", v8[b, hk, (k0 + j) // 4, d, (k0 + j) % 4])")
    pv_block = _indent(pv, "            ")
    vl, vl_steps = knobs.vector, bk // knobs.vector
    level = _u8_level(f"fexp(S[i, jo * {vl} + jj] - muse) * pscale")
    source = f'''
@T.prim_func
def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, vscale_h: T.handle,
         coef_h: T.handle{add_param}, out_h: T.handle, nk: T.int32, hd: T.int32):{decl}
    v8 = T.match_buffer(v_h, (B, HK, NK // 4, {dv}, 4), "int8")
    vscale = T.match_buffer(vscale_h, (B, HK, {dv}), "float32")
    for task in T.parallel(B * H * (NQ // {bq})):{_task_prologue(knobs)}
        acc = T.alloc_buffer(({bq}, {dv}), "int32")
        P8 = T.alloc_buffer(({bq}, {bk}), "uint8")
        for i in range({bq}):
            for d in T.vectorized({dv}):
                acc[i, d] = 0
        for kt in range({_tile_loop_header(knobs, wl)}):
            k0 = T.Bind(kt * {bk})
{_row_softmax_step(knobs, wl, "            ", update_acc=False)}
        for kt in range({_tile_loop_header(knobs, wl)}):
            k0 = T.Bind(kt * {bk})
            for i in range({bq}):
                row = T.Bind(q0 + i)
                muse = T.Bind(T.Select(m[i] == NEG_INF, T.float32(0), m[i]))
                pscale = T.Bind(T.Select(l[i] > T.float32(0), T.float32(255) / l[i],
                                         T.float32(0)))
{_indent(_fill_scores(knobs, wl), "                ")}
                for jo in range({vl_steps}):
                    for jj in T.vectorized({vl}):
                        P8[i, jo * {vl} + jj] = {level}
{pv_block}{_store_rows(knobs, wl, _PV8_OUT)}
'''
    return _parse(source)


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


def _lut_full_tiles(knobs: AttentionKnobs, wl: AttentionWorkload) -> str:
    """Key tiles of row ``row`` that hold no masked key (padding or causal). The outer max
    keeps TVM's bound analysis from assuming negative counts (it then overflows int32)."""
    limit = "T.min(nk, row + 1)" if wl.causal else "nk"
    return f"T.max(T.min(ntiles, {limit} // {knobs.block_k}), 0)"


def _lut_pass_a(knobs: AttentionKnobs, wl: AttentionWorkload) -> str:
    """Per row: each key's value as a byte, and the row's smallest value.

    The value is popc(q XOR k), or popc(NOT q XOR k) = 32·W − popc(q XOR k) when the row's
    coefficient is negative, so a smaller value always means a larger score; 255 marks masked
    keys (values are ≤ 32·W ≤ 224). Tiles without masked keys skip the mask test.
    """
    vl, bk = knobs.vector, knobs.block_k
    popc = " + ".join(f"T.popcount(qw[{w}] ^ kb[b, hk, {w}, col])" for w in range(wl.words))
    keep = "col < nk" if not wl.causal else "T.And(col < nk, col <= row)"
    body = {False: "val = T.Bind({popc})", True: "val = T.Bind(T.Select({keep}, {popc}, 255))"}

    def tiles(masked: bool, bounds: str) -> str:
        return f'''
    for kt in range({bounds}):
        for jo in range({bk // vl}):
            for jj in T.vectorized({vl}):
                col = T.Bind(kt * {bk} + jo * {vl} + jj)
                {body[masked].format(popc=popc, keep=keep)}
                P[i, col] = T.Cast("uint8", val)
                vmin[jj] = T.min(vmin[jj], val)'''
    return f'''
for i in range({knobs.block_q}):
    row = T.Bind(q0 + i)
    for w in range({wl.words}):
        qw[w] = T.Select(flip, T.bitwise_not(qb[b, h, row, w]), qb[b, h, row, w])
    for jj in T.vectorized({vl}):
        vmin[jj] = 255
    nfull = T.Bind({_lut_full_tiles(knobs, wl)})''' + tiles(False, "nfull") + tiles(
        True, "nfull, ntiles") + f'''
    lo[i] = {_tree("T.min", [f"vmin[{x}]" for x in range(vl)])}'''


def _intrin(name: str, dtype: str, *args: str) -> str:
    """TVMScript text of an LLVM intrinsic call."""
    return (f"T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(\"{name}\"), "
            f"{', '.join(args)}, dtype=\"{dtype}\")")


def _lut_pass_b(knobs: AttentionKnobs, wl: AttentionWorkload, tables: int) -> str:
    """Per row: Σ exp over keys from two 16-entry float tables (k = 16·k_hi + k_lo, vpermps),
    the u8 table round(255·exp(−2|c|k)/Σ), and the row's bytes mapped through it (vpermi2b)."""
    lookups = [_intrin(VPERMI2B, "uint8x64", f"L{2 * t}", "idx", f"L{2 * t + 1}")
               for t in range(tables)]
    other = lookups[1] if tables == 2 else "T.broadcast(T.uint8(0), 64)"
    loads = "\n".join(f"    L{x} = T.Bind(lut.vload([{64 * x}], \"uint8x64\"))"
                      for x in range(2 * tables))
    e_hi = _intrin(VPERMPS, "float32x16", "TH", "T.shift_right(kk, T.broadcast(4, 16))")
    e_lo = _intrin(VPERMPS, "float32x16", "TL", "T.bitwise_and(kk, T.broadcast(15, 16))")
    term = {False: f"{e_hi} * {e_lo}", True: f"T.Select(pv != T.broadcast(255, 16), {e_hi} * "
                                              f"{e_lo}, T.broadcast(T.float32(0), 16))"}
    sums = "".join(f'''
    for kt in range({bounds}):
        for jo in range({knobs.block_k // 16}):
            pv = T.Bind(T.Cast("int32x16",
                               P.vload([i, kt * {knobs.block_k} + jo * 16], "uint8x16")))
            kk = T.Bind(pv - T.broadcast(low, 16))
            red[T.ramp(0, 1, 16)] = red.vload([0], "float32x16") + {term[masked]}'''
                   for masked, bounds in ((False, "nfull"), (True, "nfull, ntiles")))
    level = _u8_level('fexp(T.float32(-2) * ac * T.Cast("float32", t)) * pscale')
    return f'''
for i in range({knobs.block_q}):
    low = T.Bind(lo[i])
    for t in T.vectorized(16):
        tlo[t] = fexp(T.float32(-2) * ac * T.Cast("float32", t))
        thi[t] = fexp(T.float32(-32) * ac * T.Cast("float32", t))
        red[t] = T.float32(0)
    TL = T.Bind(tlo.vload([0], "float32x16"))
    TH = T.Bind(thi.vload([0], "float32x16"))
    row = T.Bind(q0 + i)
    nfull = T.Bind({_lut_full_tiles(knobs, wl)}){sums}
    total = T.Bind({_tree("T.Add", [f"red[{x}]" for x in range(16)])})
    pscale = T.Bind(T.Select(total > T.float32(0), T.float32(255) / total, T.float32(0)))
    span = T.Bind({WORD_BITS * wl.words} - low)
    for t in T.vectorized({128 * tables}):
        lut[t] = T.Select(t <= span, {level}, T.uint8(0))
{loads}
    for kt, jo in T.grid(ntiles, {knobs.block_k // 64}):
        idx = T.Bind(P.vload([i, kt * {knobs.block_k} + jo * 64], "uint8x64")
                     - T.broadcast(T.Cast("uint8", low), 64))
        P[i, T.ramp(kt * {knobs.block_k} + jo * 64, 1, 64)] = T.Select(
            idx < T.broadcast(T.uint8(128), 64), {lookups[0]}, {other})'''


def _vnni_pv(knobs: AttentionKnobs, dv: int, p_buf: str, p_col: str) -> str:
    """u8 P × s8 V of one key tile (vpdpbusd, 4 keys a step) into ``acc`` through a
    ``rows`` × Dv int32 register tile; ``p_buf[row, p_col + 4·j4]`` holds the tile's P bytes."""
    bq, bk, ri = knobs.block_q, knobs.block_k, knobs.rows
    lanes = range(dv // 16)
    regs = "\n".join(f"r{x} = T.alloc_buffer(({ri}, 16), \"int32\")" for x in lanes)
    zero = "\n".join(f"for ii in T.unroll({ri}):\n    for d in T.vectorized(16):\n"
                     f"        r{x}[ii, d] = 0" for x in lanes)
    p_word = (f"T.reinterpret(\"int8x64\", T.broadcast(T.reinterpret(\"int32\", "
              f"{p_buf}.vload([io * {ri} + ii, {p_col} + j4 * 4], \"uint8x4\")), 16))")
    dot = f"for ii in T.unroll({ri}):\n    pw = T.Bind({p_word})\n" + "\n".join(
        f"    r{x}[ii, T.ramp(0, 1, 16)] = " + _intrin(
            VPDPBUSD, "int32x16", f"r{x}.vload([ii, 0], \"int32x16\")", "pw",
            f"v8.vload([b, hk, k0 // 4 + j4, {x * 16}, 0], \"int8x64\")") for x in lanes)
    add_back = "\n".join(f"for ii in T.unroll({ri}):\n    for d in T.vectorized(16):\n"
                         f"        acc[io * {ri} + ii, {x * 16} + d] = "
                         f"acc[io * {ri} + ii, {x * 16} + d] + r{x}[ii, d]" for x in lanes)
    return (f"for io in range({bq // ri}):\n{_indent(regs, '    ')}\n{_indent(zero, '    ')}\n"
            f"    for j4 in range({bk // 4}):\n{_indent(dot, '        ')}\n"
            f"{_indent(add_back, '    ')}")


def attention_pv8_lut_module(wl: AttentionWorkload, knobs: AttentionKnobs) -> tvm.IRModule:
    """``pv_bits=8`` without bias/mask: scores computed once, no exponential per key.

    A score is ``c·(D − 2·popc)``, so a row's exponentials take at most D+1 values
    ``exp(−2|c|·k)``, k = popc − min popc (c ≥ 0; NOT q for c < 0). Per task (block_q
    rows × all keys): pass A stores each key's popc as a byte (a block_q × Nk byte tile, in
    L2) and the row's minimum; pass B sums the row's exponentials from two 16-entry float
    tables, builds the u8 table round(255·exp(−2|c|k)/Σ) of the normalised, quantized P and
    maps the row's bytes through it (vpermi2b); pass C accumulates u8 P × s8 V with vpdpbusd.
    Same arguments as ``attention_pv8_module``; needs ``pv8_uses_lut(wl)``.
    """
    knobs.check()
    if knobs.block_k % 64 or knobs.vector != 16:
        raise ValueError("the LUT kernel needs block_k a multiple of 64 and vector = 16")
    bq, bk, dv = knobs.block_q, knobs.block_k, wl.dv16
    tables = 1 if wl.words * WORD_BITS <= 127 else 2
    _, decl = _params(wl)
    q0 = f"task % (NQ // {bq}) * {bq}"
    if wl.causal:  # TVM's bound analysis overflows int32 on the causal tile count otherwise
        q0 = f"T.min({q0}, {LUT_MAX_CAUSAL_NQ})"
    source = f'''
@T.prim_func
def main(qb_h: T.handle, kb_h: T.handle, v_h: T.handle, vscale_h: T.handle, coef_h: T.handle,
         out_h: T.handle, nk: T.int32, hd: T.int32):{decl}
    v8 = T.match_buffer(v_h, (B, HK, NK // 4, {dv}, 4), "int8")
    vscale = T.match_buffer(vscale_h, (B, HK, {dv}), "float32")
    for task in T.parallel(B * H * (NQ // {bq})):
        b = T.Bind(task // (H * (NQ // {bq})))
        h = T.Bind(task // (NQ // {bq}) % H)
        q0 = T.Bind({q0})
        hk = T.Bind(h // (H // HK))
        c = T.Bind(coef[b, h])
        ac = T.Bind(T.fabs(c))
        flip = T.Bind(c < T.float32(0))
        ntiles = T.Bind({_tile_loop_header(knobs, wl)})
        P = T.alloc_buffer(({bq}, NK), "uint8")
        lo = T.alloc_buffer(({bq},), "int32")
        qw = T.alloc_buffer(({wl.words},), "int32")
        vmin = T.alloc_buffer(({knobs.vector},), "int32")
        tlo = T.alloc_buffer((16,), "float32")
        thi = T.alloc_buffer((16,), "float32")
        red = T.alloc_buffer((16,), "float32")
        lut = T.alloc_buffer(({128 * tables},), "uint8")
        acc = T.alloc_buffer(({bq}, {dv}), "int32")
        for i in range({bq}):
            for d in T.vectorized({dv}):
                acc[i, d] = 0
{_indent(_lut_pass_a(knobs, wl), "        ")}
{_indent(_lut_pass_b(knobs, wl, tables), "        ")}
        for kt in range(ntiles):
            k0 = T.Bind(kt * {bk})
{_indent(_vnni_pv(knobs, dv, "P", "k0"), "            ")}{_store_rows(knobs, wl, _PV8_OUT)}
'''
    return _parse(source)


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


NEG_INF = tirx.const(-math.inf, "float32")


def _parse(source: str) -> tvm.IRModule:
    """Parse generated TVMScript; kernels may use ``fexp`` and ``NEG_INF``."""
    return _module(tvm.script.from_source(source, extra_vars={"T": T, "fexp": fexp,
                                                              "NEG_INF": NEG_INF}))


def _module(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """The one-kernel IRModule ``tvm.compile`` gets (symbol ``main``)."""
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
