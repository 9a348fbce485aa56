"""TVMScript (TIRx, target LLVM) of the CPU backward's STE epilogue: the gradient to q (or k)
from the gradient of its scores operand, for the ``sign`` binarizer.

What it does: ``ste_module(scale_mode, dtype)`` builds the kernel that computes, per (b, query
head) unit (one parallel task each), what ``reference._input_grad`` computes for x = q or k
from ``d_hat`` = d(x̂), the gradient of x̂ = s·sign(x_in) (the backward kernel's dq̂ / dk̂):

* ``mean_abs``: ``ds = Σ_{n,d} b(x)·d_hat`` (b(x) = −1 below 0, +1 otherwise: ±0 and NaN give
  +1, as ``reference.binarize_value``), then ``grad = d_hat·[|x| ≤ clip]·s`` and, in a second
  pass over the unit, ``grad += sign(x)·(ds / (N·D))`` (torch.sign: 0 for ±0 and NaN);
* ``none``: ``grad = d_hat·[|x| ≤ clip]·s`` (s is 1, or NaN where x holds a NaN or ±Inf);
* ``static``: ``grad = d_hat·[|x / s| ≤ clip]`` (x̂ = s·sign(x / s): s and 1/s cancel).

The products are rounded where the reference rounds them: the window multiplies as a 0/1
float (a NaN or ±Inf ``d_hat`` stays NaN outside the window), and ``sign(x)·ds/(N·D)`` is
added in its own pass, so LLVM cannot contract ``d_hat·s + …`` into one fused multiply-add
(TVM's LLVM target allows contraction). Only ``ds`` is summed in another order than torch's:
16 float32 lanes over a row's D, each row's lanes added into 16 float64 lanes, summed at the
end of the unit.

Arguments: ``x [B, HX, N, D]`` (``dtype``: float32, float16 or bfloat16, any strides on B, HX,
N, unit stride on D; each element cast to float32 as it is read), ``d_hat [B, H, N, D]``
float32 (any strides, unit on D: the padded kernel output's slice), ``s [B, H]`` float32 (the
per-(b, query head) scale), the output ``grad [B, H, N, D]`` float32 (any strides, unit on D;
it may be ``d_hat`` itself: every element is read before it is written, and the function does
not declare its buffers ``noalias``), then ``clip`` (the STE clip, float32). GQA: query head h
reads x's head ``h // (H // HX)``.

What it does not: the scales, GQA sums or dtype conversion of the gradients (the host,
``backward_dispatch``), soft binarizers (their derivative runs in torch, on the reference
path).
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .kernels import ELEM_ALIGN, _module, _tree

#: part of the cache key: bump it when the kernel's arguments or math change
KERNEL_VERSION = 1
#: float32 lanes of the vectorized loops over D (one AVX-512 vector)
LANES = 16


def _read(x: tirx.Buffer, b, h, n, d) -> tirx.PrimExpr:
    """x[b, h, n, d] as float32. An expression, used where it is needed, never bound to a
    variable (``T.Bind``): TVM 0.27's bfloat16 legalization then converts the raw bits of a
    bfloat16 element as an integer (LLVM merges the repeated loads)."""
    return T.Cast("float32", x[b, h, n, d])


def _binary(xv: tirx.PrimExpr) -> tirx.PrimExpr:
    """``reference.binarize_value`` for sign: −1 below 0, +1 for ≥ 0, ±0 and NaN."""
    return T.Select(xv < T.float32(0), T.float32(-1), T.float32(1))


def _sign(xv: tirx.PrimExpr) -> tirx.PrimExpr:
    """``torch.sign``: ±1, and +0 for ±0 and NaN."""
    return T.Select(xv > T.float32(0), T.float32(1),
                    T.Select(xv < T.float32(0), T.float32(-1), T.float32(0)))


def _window(v: tirx.PrimExpr, clip: tirx.PrimExpr) -> tirx.PrimExpr:
    """The STE window ``[|v| ≤ clip]`` as a 0/1 float (0 for NaN); ``|v|`` as max(v, −v), which
    vectorizes (TVM's ``fabs`` of a vector is scalarised on this target)."""
    return T.Select(T.max(v, -v) <= clip, T.float32(1), T.float32(0))


def ste_module(scale_mode: str, dtype: str = "float32") -> tvm.IRModule:
    """The STE epilogue of ``scale_mode`` for x of ``dtype`` (arguments: module docstring)."""
    if scale_mode not in ("mean_abs", "static", "none"):
        raise ValueError(f"no STE kernel for scale_mode={scale_mode!r}")
    mean_abs, static = scale_mode == "mean_abs", scale_mode == "static"

    @T.macro
    def element(x, dh, g, acc, b, h, hx, n, d, sv, clip):
        """grad at (n, d) without the mean|x| term; for mean_abs b(x)·d_hat into lane d % 16."""
        if static:
            g[b, h, n, d] = dh[b, h, n, d] * _window(_read(x, b, hx, n, d) / sv, clip)
        else:
            if mean_abs:
                acc[d % LANES] = acc[d % LANES] + _binary(_read(x, b, hx, n, d)) * dh[b, h, n, d]
            g[b, h, n, d] = dh[b, h, n, d] * _window(_read(x, b, hx, n, d), clip) * sv

    @T.macro
    def window_pass(x, dh, g, acc, total, b, h, hx, N, D, sv, clip):
        """Every row of the unit through ``element``; for mean_abs each row's lanes of
        b(x)·d_hat added into ``total``'s float64 lanes."""
        for n in range(N):
            if mean_abs:
                for l in T.vectorized(LANES):
                    acc[l] = T.float32(0)
            for dc in range(D // LANES):
                for l in T.vectorized(LANES):
                    element(x, dh, g, acc, b, h, hx, n, dc * LANES + l, sv, clip)
            for d in range(D // LANES * LANES, D):
                element(x, dh, g, acc, b, h, hx, n, d, sv, clip)
            if mean_abs:
                for l in T.vectorized(LANES):
                    total[l] = total[l] + T.Cast("float64", acc[l])

    @T.macro
    def mean_pass(x, g, b, h, hx, N, D, c):
        """grad += sign(x)·c, c = ds / (N·D): the mean|x| scale's gradient."""
        for n in range(N):
            for dc in range(D // LANES):
                for l in T.vectorized(LANES):
                    g[b, h, n, dc * LANES + l] = g[b, h, n, dc * LANES + l] + _sign(
                        _read(x, b, hx, n, dc * LANES + l)) * c
            for d in range(D // LANES * LANES, D):
                g[b, h, n, d] = g[b, h, n, d] + _sign(_read(x, b, hx, n, d)) * c

    @T.prim_func
    def main(x_h: T.handle, dh_h: T.handle, s_h: T.handle, g_h: T.handle, clip: T.float32):
        B = T.int32()
        HX = T.int32()
        H = T.int32()
        N = T.int32()
        D = T.int32()
        xs = (T.int32(), T.int32(), T.int32())
        hs = (T.int32(), T.int32(), T.int32())
        gs = (T.int32(), T.int32(), T.int32())
        x = T.match_buffer(x_h, (B, HX, N, D), dtype, strides=(*xs, 1), align=ELEM_ALIGN)
        dh = T.match_buffer(dh_h, (B, H, N, D), "float32", strides=(*hs, 1), align=ELEM_ALIGN)
        s = T.match_buffer(s_h, (B, H), "float32")
        g = T.match_buffer(g_h, (B, H, N, D), "float32", strides=(*gs, 1), align=ELEM_ALIGN)
        for u in T.parallel(B * H):
            acc = T.alloc_buffer((LANES,), "float32")
            total = T.alloc_buffer((LANES,), "float64")
            b = T.Bind(u // H)
            h = T.Bind(u % H)
            hx = T.Bind(h // (H // HX))
            sv = T.Bind(s[b, h])
            for l in T.vectorized(LANES):
                total[l] = T.float64(0)
            window_pass(x, dh, g, acc, total, b, h, hx, N, D, sv, clip)
            if mean_abs:
                ds = T.Bind(T.Cast("float32", _tree(T.Add, [total[i] for i in range(LANES)])))
                c = T.Bind(ds / T.Cast("float32", N * D))
                mean_pass(x, g, b, h, hx, N, D, c)

    return _module(main)
