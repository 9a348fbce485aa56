"""``binattn bench``: time binattn's kernels against SDPA / float baselines on this machine.

Prints one table of times and ratios measured side by side in one run (``--json`` also writes
them). One function per ``--device`` (``cpu``: TVM LLVM kernels; ``cuda``: the prebuilt CUDA
kernels). ``--model NAME`` instead runs one model's rows of the end-to-end table
(``binattn/bench/e2e.py``, the code ``benchmarks/e2e.py`` runs): every path of that model, whole
forward. What it does not: sweep sizes or plot (``benchmarks/cpu_attention.py`` does).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import click
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from .tune_cmd import parse_shape

console = Console()


def _bench_cpu(shape: tuple[int, int, int, int], repeat: int, reference: bool) -> list:
    from ..tvm_kernels.cpu import bench as cpu_bench

    b, h, n, d = shape
    console.print(f"[dim]{cpu_bench.machine_load()}; first runs build kernels (cached after)[/]")
    with console.status("timing attention…"):
        att = cpu_bench.bench_attention(b, h, n, d, repeat=repeat,
                                        with_reference=reference and n <= cpu_bench.REFERENCE_MAX_N)
    with console.status("timing scores…"):
        sc = cpu_bench.bench_scores(n, d, repeat=repeat, with_numpy=n <= 4096)
    return [(att, "SDPA fp32"), (sc, "float32 ±1 matmul")]


def _bench_cuda(shape: tuple[int, int, int, int], repeat: int, reference: bool) -> list:
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine")
    from ..tvm_kernels.cuda import bench as cuda_bench

    with console.status("timing binattn vs SDPA cuDNN / FLASH (CUDA graphs)…"):
        return [(cuda_bench.bench_row(shape, repeat=max(repeat, 10)), "SDPA cuDNN")]


DEVICES: dict[str, Callable[..., list]] = {"cpu": _bench_cpu, "cuda": _bench_cuda}


def _table(row, baseline: str) -> Table:
    table = Table(title=f"{row.kind} {row.shape}  (kernel: {row.path.get('binattn', '?')})")
    for col in ("contender", "median ms", "min ms", f"speed-up vs {baseline}"):
        table.add_column(col, justify="right" if col != "contender" else "left")
    for name, t in row.timings.items():
        ratio = row.ratio(baseline, name)
        table.add_row(name, f"{t.median_ms:.2f}", f"{t.min_ms:.2f}",
                      "—" if ratio is None else f"{ratio:.2f}×")
    return table


def _bench_model(name: str, device: str, size: Optional[str], budget_ms: float,
                 json_path: Optional[Path]) -> None:
    import torch

    from ..bench import e2e
    from ..bench.models import MODELS

    if name not in MODELS:
        raise UserError(f"--model: unknown {name!r}; choose from {', '.join(MODELS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU on this machine")
    size = size or ("full" if device == "cuda" else "small")

    def plain(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    result = e2e.run([name], torch.device(device), size, budget_ms,
                     on_row=lambda row: plain(e2e.log_line(row)), log=plain)
    plain(e2e.table(result["rows"], result["device"]))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1))


@click.command(name="bench")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default="cpu", show_default=True,
              help="Where to run: cpu = binattn's TVM LLVM kernels.")
@click.option("--shape", default="1,8,4096,64", show_default=True,
              help="Attention workload B,H,N,D (scores use one N×N head of it).")
@click.option("--repeat", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Timed runs per contender (interleaved).")
@click.option("--no-reference", is_flag=True, help="Skip the (slow, N² memory) reference op.")
@click.option("--model", default=None,
              help="Run this model's rows of the end-to-end table instead (vit_b, dit_xl, flux, "
                   "video, bert, llama, vit_b_1024).")
@click.option("--size", type=click.Choice(["full", "small"]), default=None,
              help="--model's size (default: full on cuda, small on cpu).")
@click.option("--budget-ms", type=click.FloatRange(1, 60000), default=1000, show_default=True,
              help="--model: ms of timed repetitions per path.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the timings as JSON here.")
def command(device: str, shape: str, repeat: int, no_reference: bool, model: Optional[str],
            size: Optional[str], budget_ms: float, json_path: Optional[Path]) -> None:
    """Benchmark binattn's kernels against SDPA and float baselines, side by side.

    \b
    Examples:
      binattn bench --device cpu
      binattn bench --shape 1,12,197,64 --repeat 20 --json bench.json
      binattn bench --model bert --device cpu
    """
    if json_path is not None and not json_path.parent.exists():
        raise UserError(f"--json: directory {json_path.parent} does not exist")
    if model is not None:
        return _bench_model(model, device, size, budget_ms, json_path)
    parsed = parse_shape(shape)
    rows = DEVICES[device](parsed, repeat, not no_reference)
    for row, baseline in rows:
        console.print(_table(row, baseline))
    if json_path is not None:
        payload = [{"kind": r.kind, "shape": list(r.shape), "kernel": r.path.get("binattn"),
                    "timings_ms": {k: vars(t) for k, t in r.timings.items()},
                    "max_abs_err": r.max_abs_err} for r, _ in rows]
        json_path.write_text(json.dumps(payload, indent=1))
