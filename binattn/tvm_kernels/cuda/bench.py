"""Timing of binattn's CUDA attention against torch SDPA (cuDNN, FLASH) on the current GPU.

What it does: ``measure(shape)`` times, side by side in one process, one CUDA-graphed
``ops.binary_attention`` call (sign-pack + scales + fused kernel), the fused kernel alone,
the sign-pack of q and k, the same call with ``pv_bits=8``, and SDPA with the cuDNN and the
FLASH backends (also graphed), and returns the times plus the ceiling times of CEILINGS.md (exp
unit, 16-bit PV, 1-bit QKᵀ);
``bench_row`` packs that into the ``BenchRow`` that ``binattn bench`` prints;
``measure_relpos`` times a relative-position-biased call (bias table in-kernel vs gathered);
``measure_backward`` times forward + backward (the training path) and its peak memory. Used by
``benchmarks/gpu_attention.py`` (table + PNG over the issue's shapes) and ``binattn bench
--device cuda``. What it does not: check correctness (tests/test_gpu_kernels.py) or plot.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ceilings measured on Hopper (lab/CEILINGS.md, H100 column where both exist)
EXP_PER_S = 4.17e12
MMA_F16_FLOPS = 640e12
MMA_B1_OPS = 10.0e15


def bench_ms(fn, reps: int = 50) -> float:
    """Median ms of ``fn`` (triton's do_bench when present: L2 flushed, warm-up; else events)."""
    try:
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=25, rep=reps, return_mode="median"))
    except ImportError:
        for _ in range(5):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def graphed(fn):
    """``fn`` captured in a CUDA graph (what it costs inside a graphed / compiled model,
    without Python dispatch overhead); returns the replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def ceilings_us(B: int, H: int, N: int, D: int) -> dict:
    """Time (µs) each unit needs at its ceiling for one forward (exp, PV 16-bit, QKᵀ 1-bit)."""
    scores = B * H * N * N
    return {"exp": scores / EXP_PER_S * 1e6, "pv_bf16": 2 * scores * D / MMA_F16_FLOPS * 1e6,
            "qk_b1": 2 * scores * 256 / MMA_B1_OPS * 1e6}


def sdpa_ms(q, k, v, backend) -> float | None:
    """SDPA with one backend, CUDA-graphed like binattn's number (None if it cannot run)."""
    try:
        with sdpa_kernel([backend]):
            return bench_ms(graphed(lambda: F.scaled_dot_product_attention(q, k, v)))
    except RuntimeError:
        return None


def measure(shape, dtype=torch.bfloat16, reps: int = 50) -> dict:
    from ... import ops
    from binattn.tvm_kernels.cuda import dispatch as cd

    B, H, N, D = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=g) for _ in range(3))
    out = torch.empty_like(q)
    args = (None, None, False, None, "mean_abs", None, None, None, None, "sign", 1.0, 1.0)
    call = lambda: ops.binary_attention(q, k, v, check_finite=False)  # noqa: E731
    call8 = lambda: ops.binary_attention(  # noqa: E731
        q, k, v, pv_bits=8, check_finite=False)
    call8()
    path8 = ops.kernel_report().get("binary_attention/cuda", "?")
    call()
    path = ops.kernel_report().get("binary_attention/cuda", "?")
    qb, kb, kp, qa, ka = cd.pack_q_and_k(q, k)
    name = cd.attention_symbol(q.device, dtype, D, False, N)  # the kernel the dispatcher picks
    v32, o32 = v.view(torch.int32).view(B, H, N, D // 8, 4), out.view(torch.int32)
    mult = float(1.4426950408889634 / math.sqrt(D) / (N * D) ** 2)
    fused = lambda: cd._call(q.device, name, qb, kb, kp, v32, o32, qa, ka,  # noqa: E731
                             cd._dummy(q.device), cd._dummy(q.device, torch.int32), 0, 1, 0, 0,
                             0, 0, mult, D)
    row = {"shape": list(shape), "path": path,
           "eager_ms": bench_ms(call, reps), "binattn_ms": bench_ms(graphed(call), reps),
           "fused_ms": bench_ms(fused, reps),
           "pv8_ms": bench_ms(graphed(call8), reps), "pv8_path": path8,
           "sign_pack_ms": bench_ms(graphed(lambda: cd.pack_q_and_k(q, k)), reps),
           "cudnn_ms": sdpa_ms(q, k, v, SDPBackend.CUDNN_ATTENTION),
           "flash_ms": sdpa_ms(q, k, v, SDPBackend.FLASH_ATTENTION)}
    row["ceil_us"] = ceilings_us(B, H, N, D)
    del q, k, v, out
    torch.cuda.empty_cache()
    return row


def measure_relpos(shape, grid, dtype=torch.bfloat16, reps: int = 50) -> dict:
    """A relative-position-biased call, CUDA-graphed, side by side: binattn with the table
    looked up in-kernel (``bias=table, bias_index=index``), binattn with the bias gathered by
    torch first (``RelPosBias()``'s dense view, the path before the table kernel), binattn
    without bias, and SDPA (cuDNN, then memory-efficient) with the gathered bias as its float
    mask; and ``pv_bits=8`` with the table (the 8-bit kernel's table variant). Every
    timed call includes its gather (a relpos model does it every forward)."""
    from ... import ops
    from binattn.ops import RelPosBias
    from binattn.tvm_kernels.cuda import dispatch as cd

    B, H, N, D = shape
    rel = RelPosBias(H, grid).cuda()
    if rel.index.shape[0] != N:
        raise ValueError(f"grid {grid} + 1 prefix token gives {rel.index.shape[0]} tokens, not {N}")
    table, index = rel.table.detach(), rel.index
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    op = ops.binary_attention
    calls = {"table_ms": lambda: op(q, k, v, bias=table, bias_index=index, check_finite=False),
             "gathered_ms": lambda: op(q, k, v, bias=rel().detach(), check_finite=False),
             "no_bias_ms": lambda: op(q, k, v, check_finite=False),
             "pv8_table_ms": lambda: op(q, k, v, bias=table, bias_index=index, pv_bits=8,
                                        check_finite=False)}
    row = {"shape": list(shape), "grid": list(grid), "table_rows": int(table.shape[0]),
           "table_kernel": cd.uses_table_kernel(q, v, table, None, None, index)}
    row.update({key: bench_ms(graphed(fn), reps) for key, fn in calls.items()})

    def sdpa():
        mask = rel().detach().to(dtype).contiguous().unsqueeze(0)  # SDPA wants stride 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for key, backend in (("cudnn_ms", SDPBackend.CUDNN_ATTENTION),
                         ("efficient_ms", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                row[key] = bench_ms(graphed(sdpa), reps)
        except RuntimeError:
            row[key] = None
    del q, k, v
    torch.cuda.empty_cache()
    return row


def _fwd_bwd(fn, q, k, v, grad):
    """One forward + backward of ``fn`` (gradients returned, not accumulated)."""
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)


def _peak_bytes(step) -> int:
    """Peak GPU bytes one ``step()`` allocates above what was live before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure_backward(shape, dtype=torch.bfloat16, reps: int = 30,
                     reference_limit: float = 40e9) -> dict:
    """Forward + backward of one attention call, eager, side by side: binattn's training path
    (``ops.binary_attention`` recording a gradient: ``ops.sdpa``), SDPA with the cuDNN and the
    FLASH backends, and the reference VJP (the path before; only where its N×N float32
    tensors fit ``reference_limit`` bytes); ms and peak extra GPU bytes of each, and which path
    binattn's forward and backward took."""
    from ... import ops

    B, H, N, D = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=g)
               .requires_grad_() for _ in range(3))
    grad = torch.randn(B, H, N, D, device="cuda", dtype=dtype, generator=g)
    paths = {"binattn": lambda q, k, v: ops.binary_attention(q, k, v),
             "cudnn": (SDPBackend.CUDNN_ATTENTION, F.scaled_dot_product_attention),
             "flash": (SDPBackend.FLASH_ATTENTION, F.scaled_dot_product_attention)}
    if 6 * 4 * B * H * N * N < reference_limit:
        paths["reference"] = lambda q, k, v: ops.reference.binary_attention(q, k, v)
    row = {"shape": list(shape)}
    for name, fn in paths.items():
        backend = None
        if isinstance(fn, tuple):
            backend, fn = fn
        step = _fwd_bwd(fn, q, k, v, grad)
        try:
            with sdpa_kernel([backend]) if backend else contextlib.nullcontext():
                step()
                row[f"{name}_ms"] = bench_ms(step, reps)
                row[f"{name}_bytes"] = _peak_bytes(step)
        except RuntimeError as exc:   # a backend that cannot run this shape
            row[f"{name}_ms"], row[f"{name}_bytes"] = None, None
            row[f"{name}_error"] = str(exc).splitlines()[0][:200]
        if name == "binattn":
            report = ops.kernel_report()
            row["path"] = [report.get("binary_attention/cuda"),
                           report.get("binary_attention_backward/cuda")]
    del q, k, v, grad
    torch.cuda.empty_cache()
    return row


def bench_row(shape, repeat: int = 50):
    """``measure`` as a ``cpu_bench.BenchRow`` (median times; ratios vs SDPA cuDNN)."""
    from ..cpu.bench import BenchRow, Timing

    r = measure(tuple(shape), reps=repeat)
    row = BenchRow(kind="attention", shape=tuple(shape), path={"binattn": r["path"]})
    for name, key in (("binattn (graphed op)", "binattn_ms"), ("binattn fused kernel", "fused_ms"),
                      ("sign-pack q+k", "sign_pack_ms"), ("binattn pv_bits=8", "pv8_ms"),
                      ("SDPA cuDNN", "cudnn_ms"),
                      ("SDPA FLASH", "flash_ms")):
        if r[key] is not None:
            row.timings[name] = Timing(median_ms=r[key], min_ms=r[key])
    return row
