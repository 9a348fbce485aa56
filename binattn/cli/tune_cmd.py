"""``binattn tune``: autotune binattn's TVM kernels and store the best schedules in a database.

Knob search with TVM's timer (default) or TVM meta_schedule (score kernel), locally or on a
remote device through a TVM RPC tracker. Later kernel builds read the database (``--db``, default
``$BINATTN_TUNE_DB`` or ``~/.cache/binattn/tuning``). One function per ``--target``; only
``llvm`` is implemented here. What it does not: tune anything outside binattn's kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import UserError

console = Console(stderr=True)


@dataclass
class TuneOptions:
    kernels: tuple[str, ...]
    shape: tuple[int, int, int, int]
    causal: bool
    pv_bits: tuple[str, ...]
    trials: int
    method: str
    db: Path
    rpc_tracker: Optional[str]
    rpc_key: Optional[str]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise UserError(f"--shape must be four positive integers B,H,N,D, got {text!r}")
    return parts


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[best]}"), console=console)


def _tune_llvm(opts: TuneOptions) -> list[tuple[str, str, Optional[float], int]]:
    """Tune the LLVM kernels; rows of (workload, method, best ms, trials)."""
    try:
        from ..tvm_kernels.cpu import tune
        from ..schedules.database import TuningDatabase
    except ImportError as err:
        raise UserError(f"tuning needs the TVM compiler (pip install binattn[tvm]): {err}")
    db = TuningDatabase(opts.db)
    rpc = None
    if opts.rpc_tracker:
        try:
            rpc = tune.RPCSettings.parse(opts.rpc_tracker, opts.rpc_key or "")
        except ValueError as err:
            raise UserError(str(err)) from err
    measurer = tune.Measurer(rpc)
    b, h, n, d = opts.shape
    rows = []
    with _progress() as progress:
        def tracker(description: str) -> Callable:
            task = progress.add_task(description, total=opts.trials, best="")
            best = [float("inf")]

            def step(result) -> None:
                best[0] = min(best[0], result.ms)
                progress.update(task, advance=1, best=f"best {best[0]:.2f} ms")
            return step

        if "attention" in opts.kernels:
            for bits in opts.pv_bits:
                pv8 = bits == "8"
                tag, results, best = tune.tune_attention(
                    tune.AttentionShape(b, h, n, d), opts.trials, db, causal=opts.causal,
                    pv8=pv8, measurer=measurer,
                    progress=tracker(f"attention pv_bits={bits}"))
                rows.append((tag, "knobs", best.ms if best else None, len(results)))
        if "scores" in opts.kernels:
            if opts.method == "meta-schedule":
                console.print("[dim]meta_schedule: importing its tensor intrinsics takes ~40 s[/]")
                tag, best_ms = tune.tune_scores_meta_schedule(n, n, d, opts.trials, db,
                                                              batch=b * h, rpc=rpc)
                rows.append((tag, "meta_schedule", best_ms, opts.trials))
            else:
                tag, results, best = tune.tune_scores_knobs(
                    n, n, d, opts.trials, db, batch=b * h, measurer=measurer,
                    progress=tracker("popcount scores"))
                rows.append((tag, "knobs", best.ms if best else None, len(results)))
    return rows


def _tune_cuda(opts: TuneOptions) -> list[tuple[str, str, Optional[float], int]]:
    """Build CUDA schedule candidates here; time them now if a GPU is here, else say how."""
    try:
        from ..schedules.cuda import attention as cuda_attention
        from ..tvm_kernels.cuda import tune as cuda_tune
    except ImportError as err:
        raise UserError(f"tuning needs the TVM compiler (pip install binattn[tvm]): {err}")
    import torch

    dv = cuda_attention.dv_bucket(opts.shape[3])
    if dv is None:
        raise UserError(f"--shape: D={opts.shape[3]} is larger than the CUDA kernel's 256")
    out = Path(opts.db) / "cuda_candidates"
    n_cands = len(cuda_tune.candidates(dv)) + len(cuda_tune.candidates(dv, short=True))
    with console.status(f"building {n_cands} CUDA candidates, regular and short-sequence kernel "
                        "(TVM + nvcc)…"):
        cuda_tune.build_candidates(out, dvs=(dv,), short_dvs=(dv,))
    if not torch.cuda.is_available():
        console.print(f"no GPU here: copy {out} to the GPU machine, run\n"
                      f"  python -m binattn.tvm_kernels.cuda.tune time {out.name}\n"
                      f"and record the result here with\n"
                      f"  python -m binattn.tvm_kernels.cuda.tune record {out.name}/timings.json")
        return []
    best = cuda_tune.record_best(cuda_tune.time_candidates(out))
    return [(key, f"grid w{r['schedule']['warps']} k{r['schedule']['key_block']}", r["ms"],
             len(cuda_tune.candidates(dv, short=key.endswith("/short"))))
            for key, r in best.items()]


TARGETS: dict[str, Callable[[TuneOptions], list]] = {"llvm": _tune_llvm, "cuda": _tune_cuda}


@click.command(name="tune")
@click.option("--target", "target", type=click.Choice(sorted(TARGETS)), default="llvm",
              show_default=True, help="Which kernels to tune: llvm = this CPU.")
@click.option("--kernel", "kernels", type=click.Choice(["attention", "scores", "all"]),
              default="all", show_default=True, help="Kernel(s) to tune.")
@click.option("--shape", default="1,8,4096,64", show_default=True,
              help="Workload B,H,N,D to time candidates on (knobs apply to every N).")
@click.option("--causal", is_flag=True, help="Tune the causal attention variant.")
@click.option("--pv-bits", "pv_bits", type=click.Choice(["32", "8", "both"]), default="both",
              show_default=True, help="Attention P·V precision(s) to tune.")
@click.option("--trials", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="Candidates measured per kernel.")
@click.option("--method", type=click.Choice(["knobs", "meta-schedule"]), default="knobs",
              show_default=True,
              help="knobs: search the templates' knobs with TVM's timer; meta-schedule: TVM "
                   "meta_schedule on the score kernel (slow: ~40 s start-up + builds).")
@click.option("--db", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Tuning database directory [default: $BINATTN_TUNE_DB or "
                   "~/.cache/binattn/tuning].")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on a remote device registered with this TVM RPC tracker.")
@click.option("--rpc-key", default=None, help="Device key to request from the tracker.")
def command(target, kernels, shape, causal, pv_bits, trials, method, db, rpc_tracker, rpc_key):
    """Autotune binattn's TVM kernels; later builds use the best schedules found.

    \b
    Examples:
      binattn tune --trials 32
      binattn tune --kernel scores --method meta-schedule --trials 64
      binattn tune --rpc-tracker 10.0.0.5:9190 --rpc-key rasp4 --db ./tuned
    """
    from ..schedules.database import default_db_dir

    if rpc_key and not rpc_tracker:
        raise UserError("--rpc-key needs --rpc-tracker HOST:PORT")
    opts = TuneOptions(
        kernels=("attention", "scores") if kernels == "all" else (kernels,),
        shape=parse_shape(shape), causal=causal,
        pv_bits=("32", "8") if pv_bits == "both" else (pv_bits,), trials=trials, method=method,
        db=db or default_db_dir(), rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    rows = TARGETS[target](opts)
    table = Table(title=f"best schedules ({target}) → {opts.db}")
    for col in ("workload", "method", "trials", "best ms"):
        table.add_column(col)
    for tag, how, best_ms, count in rows:
        table.add_row(tag, how, str(count), "all failed" if best_ms is None else f"{best_ms:.3f}")
    Console().print(table)
    if any(best_ms is None for _, _, best_ms, _ in rows):
        raise UserError("every candidate failed for at least one kernel (see the table)")
