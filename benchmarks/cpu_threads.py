"""Which thread pool should run binattn's CPU kernels: torch's OpenMP pool or TVM's own?

Side by side in one process (``BINATTN_CPU_THREADS`` switched between rounds, the kernel
libraries repointed with ``threads.readopt``), interleaved rounds, each cell the fastest call
of its rounds (other load on a shared machine only ever adds time):

* the binarized model's eager forward (the e2e benchmark's small CPU models: ``vit_b``,
  ``bert``, ``llama`` by default) on torch's pool and on TVM's, and the original model (SDPA);
* one ``binary_attention`` call right after a torch matmul (a model's rhythm: torch's OpenMP
  threads are still spinning when the kernel starts) at ViT-B's and BERT's head shapes.

    python benchmarks/cpu_threads.py [--models vit_b bert llama] [--rounds 5] [--out DIR]

Writes ``DIR/cpu_threads.json`` (default ``benchmarks/results``) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

import binattn
from binattn.bench import models
from binattn.bench.e2e import _binarized
from binattn.tvm_kernels.cpu import bench as cpu_bench, threads

OP_SHAPES = ((8, 12, 197, 64), (2, 12, 512, 64))


def fastest_ms(fn: Callable[[], object], calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def use_pool(name: str) -> None:
    os.environ[threads.ENV] = name
    threads.readopt()


def model_cases(names: list[str]) -> dict[str, tuple[Callable, Callable]]:
    """name → (original forward, binarized forward)."""
    cases = {}
    for name in names:
        built = models.build(name, "small", torch.device("cpu"), torch.float32)
        original = built.model
        gm = _binarized(models.build(name, "small", torch.device("cpu"), torch.float32), {})

        def run(module=original, built=built):
            with torch.no_grad():
                return module(*built.args, **built.kwargs)

        def run_binary(module=gm, built=built):
            with torch.no_grad():
                return module(*built.args, **built.kwargs)

        cases[name] = (run, run_binary)
    return cases


def op_cases() -> dict[str, tuple[Callable, Callable]]:
    """shape → (SDPA after a matmul, binary attention after a matmul)."""
    cases = {}
    for shape in OP_SHAPES:
        q, k, v = (torch.randn(shape) for _ in range(3))
        x, w = torch.randn(shape[0] * shape[2], 768), torch.randn(768, 768)

        def sdpa(q=q, k=k, v=v, x=x, w=w):
            x @ w
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        def binary(q=q, k=k, v=v, x=x, w=w):
            x @ w
            return binattn.ops.binary_attention(q, k, v, check_finite=False)

        cases["op " + "x".join(map(str, shape))] = (sdpa, binary)
    return cases


def measure(cases: dict, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    cells: dict[str, dict[str, float]] = {name: {} for name in cases}
    for fn_pair in cases.values():   # warm up: kernels built and loaded, both pools
        for pool in threads.POOLS:
            use_pool(pool)
            fn_pair[1]()
        fn_pair[0]()
    for _ in range(rounds):
        for name, (original, binary) in cases.items():
            for label, fn, pool in (("original / SDPA", original, "torch"),
                                    ("binattn, torch's pool", binary, "torch"),
                                    ("binattn, TVM's pool", binary, "tvm")):
                use_pool(pool)
                ms = fastest_ms(fn, calls)
                cells[name][label] = min(cells[name].get(label, float("inf")), ms)
    use_pool("torch")
    return cells


def table(cells: dict[str, dict[str, float]], title: str) -> Table:
    out = Table(title=title)
    columns = ("original / SDPA", "binattn, torch's pool", "binattn, TVM's pool")
    out.add_column("case")
    for column in columns:
        out.add_column(f"{column} ms")
    out.add_column("TVM's pool / torch's pool")
    for name, row in cells.items():
        base = row[columns[0]]
        out.add_row(name, *(f"{row[c]:.2f} ({base / row[c]:.2f}×)" for c in columns),
                    f"{row[columns[2]] / row[columns[1]]:.2f}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["vit_b", "bert", "llama"],
                        choices=models.TABLE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    console = Console()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, TVM_NUM_THREADS="
               f"{os.environ.get('TVM_NUM_THREADS', 'unset')}")
    console.print(f"[bold]{machine}; start: {cpu_bench.machine_load()}[/]")
    cases = {**model_cases(args.models), **op_cases()}
    cells = measure(cases, args.rounds, args.calls)
    end = cpu_bench.machine_load()
    console.print(table(cells, "fastest ms (× the original / SDPA)"))
    console.print(f"[bold]end: {end}[/]")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_threads.json").write_text(json.dumps(
        {"machine": machine, "load_at_end": end, "rounds": args.rounds, "calls": args.calls,
         "ms": cells}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
