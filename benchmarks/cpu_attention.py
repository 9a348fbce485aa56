"""CPU benchmark: binattn's TVM kernels vs SDPA fp32, the reference op, a float ±1 matmul, numpy.

Side by side in one run (round-robin timing, see ``binattn.tvm_kernels.cpu.bench``):
  * attention: fused binary attention (fp32 P·V and 8-bit P·V) vs
    ``F.scaled_dot_product_attention`` fp32 vs the reference op (N ≤ 2048: it materialises N²
    scores), B=1, H=8;
  * scores: packed popcount kernel vs float32 ±1 matmul vs ``numpy.bitwise_count`` (one head);
for N in 256…8192 and D in {64, 128}. Prints ratio tables, the targets at (1, 8, 4096, 64), the
machine load seen, and writes a log-log PNG of time vs N (``--out``, default
``benchmarks/cpu_attention.png``) plus the raw numbers as JSON next to it.

Usage: ``nice python benchmarks/cpu_attention.py [--quick] [--repeat 5] [--out PATH]``

``--backward`` instead times forward + backward (issue 17's CPU target): binattn with the
backward kernel vs torch SDPA fp32 vs binattn with the reference VJP, at (1, 8, 1024, 64) and
(8, 12, 128, 64) (``--backward-shapes`` to change), and prints the table with the ratios.

``--dtype bfloat16`` (or float16) runs the attention rows on inputs of that dtype (SDPA in it
too); ``--fused-qkv`` makes q, k, v the strided views of one fused projection ``[B, N, 3, H, D]``
(timm's ``permute``/``unbind``), which the kernels read in place.

``--thread-cpu-time`` runs everything on one thread (torch and TVM) and times the CPU time of
that thread instead of wall time: on a machine shared with other jobs this measures the work
each contender does, unaffected by how much of the CPU the others take.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from binattn.tvm_kernels.cpu import bench as cpu_bench  # noqa: E402

console = Console()
TARGETS = {("attention", "binattn fp32-PV"): 1.5, ("attention", "binattn 8-bit-PV"): 3.0,
           ("scores", "binattn popcount"): 4.0}
BASELINE = {"attention": "SDPA fp32", "scores": "float32 ±1 matmul"}


def run(ns: list[int], dims: list[int], repeat: int, dtype: Optional["torch.dtype"] = None,
        fused_qkv: bool = False) -> list[cpu_bench.BenchRow]:
    import torch

    dtype = dtype or torch.float32
    rows = []
    for d in dims:
        for n in ns:
            console.print(f"[dim]N={n} D={d}  ({cpu_bench.machine_load()})[/]")
            rows.append(cpu_bench.bench_attention(1, 8, n, d, repeat=repeat, dtype=dtype,
                                                  fused_qkv=fused_qkv))
            rows.append(cpu_bench.bench_scores(n, d, repeat=repeat, with_numpy=n <= 4096))
    return rows


def print_tables(rows: list[cpu_bench.BenchRow]) -> None:
    for kind in ("attention", "scores"):
        subset = [r for r in rows if r.kind == kind]
        names = list(dict.fromkeys(name for r in subset for name in r.timings))
        table = Table(title=f"{kind}: median ms (speed-up vs {BASELINE[kind]})")
        table.add_column("shape")
        for name in names:
            table.add_column(name, justify="right")
        for r in subset:
            cells = []
            for name in names:
                t = r.timings.get(name)
                ratio = r.ratio(BASELINE[kind], name)
                cells.append("—" if t is None else f"{t.median_ms:.1f} ({ratio:.2f}×)")
            table.add_row(str(r.shape), *cells)
        console.print(table)


def print_targets(rows: list[cpu_bench.BenchRow]) -> dict:
    verdicts = {}
    table = Table(title="targets at (1, 8, 4096, 64) — scores at N=4096, D=64")
    for col in ("contender", "measured", "target", "met"):
        table.add_column(col)
    for (kind, name), target in TARGETS.items():
        shape = (1, 8, 4096, 64) if kind == "attention" else (4096, 64)
        row = next((r for r in rows if r.kind == kind and r.shape == shape), None)
        ratio = row.ratio(BASELINE[kind], name) if row else None
        met = ratio is not None and ratio >= target
        verdicts[name] = {"ratio": ratio, "target": target, "met": met}
        table.add_row(name, "—" if ratio is None else f"{ratio:.2f}×", f"≥ {target}×",
                      "[green]yes[/]" if met else "[red]no[/]")
    console.print(table)
    return verdicts


def plot(rows: list[cpu_bench.BenchRow], path: Path) -> None:
    dims = sorted({r.shape[-1] for r in rows})
    fig, axes = plt.subplots(2, len(dims), figsize=(6 * len(dims), 9), squeeze=False)
    for col, d in enumerate(dims):
        for row_i, kind in enumerate(("attention", "scores")):
            ax = axes[row_i][col]
            subset = [r for r in rows if r.kind == kind and r.shape[-1] == d]
            names = list(dict.fromkeys(n for r in subset for n in r.timings))
            for name in names:
                pts = [(r.shape[-2], r.timings[name].median_ms) for r in subset
                       if name in r.timings]
                ax.loglog(*zip(*pts), marker="o", label=name)
            ax.set_title(f"{kind}, D={d}" + (" (B=1, H=8)" if kind == "attention" else " (1 head)"))
            ax.set_xlabel("N")
            ax.set_ylabel("median time (ms)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    clock = "wall time" if cpu_bench.clock == "wall" else "thread CPU time, 1 thread"
    fig.suptitle(f"binattn TVM CPU kernels vs baselines ({clock}) — {cpu_bench.machine_load()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


BACKWARD_SHAPES = ((1, 8, 1024, 64), (8, 12, 128, 64))
BACKWARD_TARGET = 1.5  # issue 17: binattn fwd+bwd ≥ 1.5× SDPA fp32 fwd+bwd


def bench_backward(shape: tuple[int, int, int, int], repeat: int) -> dict:
    """Median ms of forward + backward: binattn (backward kernel), SDPA fp32, binattn with the
    reference VJP as backward; and of binattn's backward op alone (kernel, given δ as the
    autograd formula gives it; reference)."""
    import torch
    import torch.nn.functional as F

    from binattn import ops
    from binattn.ops import dispatch, options as op_options, reference

    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(*shape, generator=gen) for _ in range(4))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

    def binattn_step(reference_vjp: bool):
        def step():
            out = ops.binary_attention(*leaves, check_finite=False)
            if reference_vjp:
                with dispatch.reference_only():
                    out.backward(g)
            else:
                out.backward(g)
        return step

    def sdpa_step():
        F.scaled_dot_product_attention(*leaves).backward(g)

    args = op_options.op_args(*op_options.split_keywords())
    delta = reference.output_row_dot(g, torch.ops.binattn.binary_attention(q, k, v, *args))

    def backward_only(reference_vjp: bool):
        def call():
            if reference_vjp:
                with dispatch.reference_only():
                    torch.ops.binattn.binary_attention_backward(g, q, k, v, *args)
            else:
                torch.ops.binattn.binary_attention_backward(g, q, k, v, *args, delta)
        return call

    fns = {"SDPA fp32": sdpa_step, "binattn (bwd kernel)": binattn_step(False),
           "binattn (reference VJP)": binattn_step(True),
           "bwd op: kernel": backward_only(False), "bwd op: reference": backward_only(True)}
    backward_only(False)()
    path = dispatch.kernel_report().get("binary_attention_backward/cpu", "?")
    timings = cpu_bench.side_by_side(fns, repeat)
    return {"shape": list(shape), "backward_path": path,
            "median_ms": {name: t.median_ms for name, t in timings.items()}}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_backward(shapes: tuple, repeat: int, out: Path) -> None:
    """The ``--backward`` run: table of forward + backward times and ratios, JSON beside."""
    import torch

    from binattn.tvm_kernels.cpu.target import host_mcpu

    console.print(f"[bold]start: {cpu_bench.machine_load()}[/]")
    rows = [bench_backward(shape, repeat) for shape in shapes]
    console.print(f"[bold]end: {cpu_bench.machine_load()}[/]")
    # after the runs: the kernel provider sets TVM_NUM_THREADS when it loads
    machine = (f"{cpu_model()} ({host_mcpu()}), {os.cpu_count()} cores; torch threads "
               f"{torch.get_num_threads()}, TVM threads {os.environ.get('TVM_NUM_THREADS')}; "
               f"clock: {cpu_bench.clock}")
    console.print(f"[bold]{machine}[/]")
    table = Table(title="forward + backward: median ms (SDPA fp32 time / this time)")
    names = list(rows[0]["median_ms"])
    for col in ("shape", *names):
        table.add_column(col, justify="right")
    for r in rows:
        ms = r["median_ms"]
        cells = [f"{ms[n]:.1f}" + (f" ({ms['SDPA fp32'] / ms[n]:.2f}×)" if "bwd op" not in n
                                     else "") for n in names]
        table.add_row(str(tuple(r["shape"])), *cells)
    console.print(table)
    for r in rows:
        ms = r["median_ms"]
        ratio = ms["SDPA fp32"] / ms["binattn (bwd kernel)"]
        console.print(f"{tuple(r['shape'])}: binattn fwd+bwd {ratio:.2f}× SDPA fp32 (target ≥ "
                      f"{BACKWARD_TARGET}×: {'met' if ratio >= BACKWARD_TARGET else 'not met'});"
                      f" vs the reference VJP "
                      f"{ms['binattn (reference VJP)'] / ms['binattn (bwd kernel)']:.2f}×; "
                      f"backward ran: {r['backward_path']}")
    out.write_text(json.dumps({"machine": machine, "load_at_end": cpu_bench.machine_load(),
                               "rows": rows}, indent=1))
    console.print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in {256, 1024, 4096}, D=64")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("cpu_attention.png"))
    parser.add_argument("--thread-cpu-time", action="store_true",
                        help="one thread everywhere; time each call's thread CPU time")
    parser.add_argument("--backward", action="store_true",
                        help="forward + backward vs SDPA fp32 and the reference VJP instead")
    parser.add_argument("--backward-shapes", type=str, default=None,
                        help="B,H,N,D;B,H,N,D… for --backward")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="dtype of the attention inputs (and of SDPA, the baseline)")
    parser.add_argument("--fused-qkv", action="store_true",
                        help="q, k, v as the strided views of one fused QKV projection")
    args = parser.parse_args()
    if args.thread_cpu_time:
        if os.environ.get("TVM_NUM_THREADS") != "1":  # must be set before TVM's pool starts
            os.environ["TVM_NUM_THREADS"] = "1"
            os.execv(sys.executable, [sys.executable, *sys.argv])
        import torch

        torch.set_num_threads(1)
        cpu_bench.clock = "thread"
        console.print("[bold]timing: thread CPU time, 1 thread (torch and TVM)[/]")
    if args.backward:
        shapes = BACKWARD_SHAPES if not args.backward_shapes else tuple(
            tuple(int(x) for x in s.split(",")) for s in args.backward_shapes.split(";"))
        suffix = "_thread_cpu" if args.thread_cpu_time else ""
        run_backward(shapes, args.repeat, args.out.with_name(f"cpu_backward{suffix}.json"))
        return
    ns = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
    dims = [64] if args.quick else [64, 128]
    console.print(f"[bold]start: {cpu_bench.machine_load()}[/]")
    import torch

    dtype = getattr(torch, args.dtype)
    BASELINE["attention"] = cpu_bench.sdpa_name(dtype)
    rows = run(ns, dims, args.repeat, dtype, args.fused_qkv)
    console.print(f"[bold]end: {cpu_bench.machine_load()}[/]")
    print_tables(rows)
    verdicts = print_targets(rows)
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({
        "load_at_end": cpu_bench.machine_load(), "clock": cpu_bench.clock, "targets": verdicts,
        "rows": [{"kind": r.kind, "shape": list(r.shape), "kernels": r.path,
                  "timings_ms": {k: vars(t) for k, t in r.timings.items()},
                  "max_abs_err": r.max_abs_err} for r in rows]}, indent=1))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
