"""Side-by-side CPU timings of binattn's TVM kernels against PyTorch/numpy baselines.

What it does: builds inputs for one workload and times, round-robin in one process (so machine
load hits every contender alike), the fused binary-attention op (full-precision and 8-bit P·V)
against ``F.scaled_dot_product_attention`` fp32 and the reference op, and the packed score
kernel against a float32 ±1 matmul and ``numpy.bitwise_count``. Returns plain rows that
``binattn bench`` and ``benchmarks/cpu_attention.py`` print and plot.

What it does not: check numerics beyond a sanity check (tests do), or pick schedules.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ... import ops
from ...ops import dispatch, reference
from ...ops.options import AttentionOptions


@dataclass
class Timing:
    median_ms: float
    min_ms: float


@dataclass
class BenchRow:
    kind: str                      # "attention" or "scores"
    shape: tuple
    timings: dict[str, Timing] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)
    max_abs_err: dict[str, float] = field(default_factory=dict)

    def ratio(self, baseline: str, contender: str) -> Optional[float]:
        if baseline not in self.timings or contender not in self.timings:
            return None
        return self.timings[baseline].median_ms / self.timings[contender].median_ms


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
clock = "wall"  # "thread": CPU time of the calling thread (single-threaded runs; load-proof)


def side_by_side(fns: dict[str, Callable[[], object]], repeat: int = 5,
                 warmup: int = 1) -> dict[str, Timing]:
    """Time each function ``repeat`` times, interleaved (a, b, c, a, b, c, …), on ``clock``."""
    now = CLOCKS[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = now()
            fn()
            samples[name].append((now() - start) * 1e3)
    return {name: Timing(statistics.median(s), min(s)) for name, s in samples.items()}


def machine_load() -> str:
    """1/5/15-minute load averages, core count and the CPU kernels' thread pool, for the
    report."""
    from .threads import pool

    name, why = pool()
    kernels = f"CPU kernels on {why}" if name == "torch" else f"CPU kernels on TVM's pool ({why})"
    try:
        one, five, fifteen = os.getloadavg()
        return (f"load avg {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores; "
                f"{kernels}")
    except OSError:
        return f"load unknown; {kernels}"


REFERENCE_MAX_N = 2048  # the reference materialises B·H·N² floats several times


SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def sdpa_name(dtype: torch.dtype = torch.float32) -> str:
    """The SDPA contender's name (the attention baseline) for inputs of this dtype."""
    return f"SDPA {SHORT[dtype]}"


def attention_inputs(batch: int, heads: int, n: int, head_dim: int,
                     dtype: torch.dtype = torch.float32, fused_qkv: bool = False,
                     seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v ``[B, H, N, D]``: three contiguous tensors, or (``fused_qkv``) the strided views
    of one fused projection ``[B, N, 3, H, D]`` as timm's attention makes them."""
    gen = torch.Generator().manual_seed(seed)
    if fused_qkv:
        qkv = torch.randn(batch, n, 3, heads, head_dim, generator=gen).to(dtype)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return tuple(torch.randn(batch, heads, n, head_dim, generator=gen).to(dtype)
                 for _ in range(3))


def bench_attention(batch: int, heads: int, n: int, head_dim: int, repeat: int = 5,
                    with_reference: Optional[bool] = None, seed: int = 0,
                    dtype: torch.dtype = torch.float32, fused_qkv: bool = False) -> BenchRow:
    """binattn fused (fp32 P·V and pv_bits=8) vs SDPA vs the reference op, on inputs of
    ``dtype`` (``fused_qkv``: strided views of one projection, read in place by the kernels)."""
    q, k, v = attention_inputs(batch, heads, n, head_dim, dtype, fused_qkv, seed)
    row = BenchRow("attention", (batch, heads, n, head_dim))
    fns = {
        "binattn fp32-PV": lambda: ops.binary_attention(q, k, v, check_finite=False),
        "binattn 8-bit-PV": lambda: ops.binary_attention(q, k, v, pv_bits=8, check_finite=False),
        sdpa_name(dtype): lambda: F.scaled_dot_product_attention(q, k, v),
    }
    with_reference = n <= REFERENCE_MAX_N if with_reference is None else with_reference
    if with_reference:
        fns["reference op"] = lambda: reference.binary_attention(q, k, v)
    with torch.no_grad():
        for name, pv_bits in (("binattn fp32-PV", None), ("binattn 8-bit-PV", 8)):
            out = fns[name]()
            row.path[name] = dispatch.kernel_report().get("binary_attention/cpu", "?")
            if n <= REFERENCE_MAX_N:
                ref = reference.binary_attention(q, k, v, options=AttentionOptions(
                    pv_bits=pv_bits))
                row.max_abs_err[name] = (out.float() - ref.float()).abs().max().item()
        row.path["binattn"] = row.path["binattn fp32-PV"]
        row.timings = side_by_side(fns, repeat)
    return row


def numpy_bitwise_count_scores(q_bits: np.ndarray, k_bits: np.ndarray, head_dim: int,
                               chunk: int = 256) -> np.ndarray:
    """D − 2·popc(q XOR k) with ``numpy.bitwise_count`` (rows chunked to bound memory)."""
    q_u, k_u = q_bits.view(np.uint32), k_bits.view(np.uint32)
    out = np.empty((q_u.shape[0], k_u.shape[0]), np.int32)
    for start in range(0, q_u.shape[0], chunk):
        x = np.bitwise_count(q_u[start:start + chunk, None, :] ^ k_u[None])
        out[start:start + chunk] = head_dim - 2 * x.sum(-1, dtype=np.int32)
    return out


def bench_scores(n: int, head_dim: int, repeat: int = 5, with_numpy: bool = True,
                 seed: int = 0) -> BenchRow:
    """Packed popcount score kernel vs float32 ±1 matmul vs numpy.bitwise_count (one head)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(n, head_dim, generator=gen), torch.randn(n, head_dim, generator=gen)
    q_bits, _ = ops.sign_pack(q)
    k_bits, _ = ops.sign_pack(k)
    q_sign, k_sign = torch.where(q >= 0, 1.0, -1.0), torch.where(k >= 0, 1.0, -1.0)
    row = BenchRow("scores", (n, head_dim))
    fns = {
        "binattn popcount": lambda: ops.popcount_scores(q_bits, k_bits, head_dim),
        "float32 ±1 matmul": lambda: q_sign @ k_sign.T,
    }
    if with_numpy:
        qn, kn = q_bits.numpy(), k_bits.numpy()
        fns["numpy bitwise_count"] = lambda: numpy_bitwise_count_scores(qn, kn, head_dim)
    exact = torch.equal(fns["binattn popcount"](), (q_sign @ k_sign.T).to(torch.int32))
    row.path["binattn"] = dispatch.kernel_report().get("popcount_scores/cpu", "?")
    row.max_abs_err["binattn popcount"] = 0.0 if exact else float("nan")
    row.timings = side_by_side(fns, repeat)
    return row
