"""The end-to-end table: each model of ``models.py`` on every path a user would time, side by
side in one run, on CPU or CUDA (issue 16 point 4).

Paths (inference, ``torch.no_grad()``): ``original eager`` (the library's SDPA attention),
``original compiled`` (``torch.compile`` default: the baseline), ``binarized eager``
(``binattn.binarize(model, inputs)``), ``binarized compiled`` (``torch.compile`` of that),
``backend=binattn`` (``torch.compile(model, backend="binattn")``) and, for transformers and
diffusers models, ``drop-in eager`` / ``drop-in compiled``: a copy of the model with
``set_attn_implementation("binattn")`` (transformers) or ``binattn.diffusers.apply(model)``
(diffusers: each layer's own processor wrapped, README's first form; DiT has no
``set_attn_processor``), then ``torch.compile``. A path that fails gives a row with its error
(the traceback in the JSON) and the run goes on. Every path of a model is built (and compiled)
first, then timed round-robin in 3 rounds, so that a load that comes and goes touches every
path alike.

Columns: ms per forward (a budget of ``reps`` ms per path; CUDA: the median of the rounds'
``bench_ms`` medians; CPU: the fastest ``perf_counter`` call of all rounds); × compile default;
× original (same kind: eager to eager, compiled to compiled); attention ms from the profiler
(CUDA: GPU time of kernels whose name says attention — binattn's sign-pack and attention
kernels, SDPA's flash/cuDNN/efficient kernels; CPU: CPU time of the outermost
``aten::scaled_dot_product_attention``-like and ``binattn::`` ops) and its binattn part;
attention's share of the path's time (attention ms / the wall ms of the profiled calls); the
attention speedup (the compile default's attention ms / the path's); the Amdahl bound
``1 / ((1 - f) + f / s)``, ``f`` the compile default's attention share; the fraction of the
bound the path reaches (its × compile default / bound); host syncs (``aten::_local_scalar_dense``
and CUDA synchronize calls, less those of profiling an empty call) and copies
(``aten::clone/copy_/contiguous/_to_copy`` of a tensor at least a third of one layer's q);
outside ms (ms − attention ms) and its ratio to the same-kind original's. Profiled counts are
per call, the mean of 3 calls. The JSON rows also hold the kernel each binattn op ran last
(``dispatch.kernel_report()``).
What it does not: check correctness (tests do) or train.
"""
from __future__ import annotations

import copy
import functools
import gc
import re
import statistics
import time
import traceback
import warnings
from typing import Any, Callable, Iterable, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from ..ops import dispatch
from .models import MODELS, Built, build

ATTENTION_KERNEL = re.compile(r"binattn|sdpa|fmha|flash|attention|attn", re.IGNORECASE)
BINATTN_KERNEL = re.compile(r"binattn", re.IGNORECASE)
COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")
BASELINE = "original compiled"
BINARY_PATHS = ("binarized eager", "binarized compiled", "backend=binattn", "drop-in eager",
                "drop-in compiled")
DROP_IN_LIBRARIES = ("transformers", "diffusers")
PROFILED_CALLS = 3   # the profile's counts are the mean of this many calls
ROUNDS = 3           # each path's timing budget is spread over this many round-robin rounds


# ----- timing and profiling (one code path for CPU and CUDA) ---------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable, device: torch.device, budget_ms: float) -> float:
    """ms of a warmed-up ``fn``: ``bench_ms``'s median (triton's do_bench) on CUDA; on CPU
    calls until ``budget_ms`` is spent (at least 1, at most 50), and their minimum (a shared
    CPU's other load only ever adds time)."""
    if device.type == "cuda":
        from ..tvm_kernels.cuda.bench import bench_ms
        return bench_ms(fn, int(budget_ms))
    times: list[float] = []
    while not times or (sum(times) < budget_ms and len(times) < 50):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _profiled(fn: Callable, device: torch.device, calls: int = 1):
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    return prof.events()


def _syncs(events) -> int:
    return sum(1 for e in events
               if e.name == "aten::_local_scalar_dense" or e.name in SYNC_CALLS)


def _is_op(event, pattern: re.Pattern) -> bool:
    return "::" in event.name and bool(pattern.search(event.name))


def _outermost(event, pattern: re.Pattern) -> bool:
    """An op matching ``pattern`` that no matching op encloses (no double count)."""
    if not _is_op(event, pattern):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if _is_op(parent, pattern):
            return False
        parent = parent.cpu_parent
    return True


def kernel_ms(events, device: torch.device, pattern: re.Pattern) -> float:
    """ms of the kernels (CUDA: GPU time, kernels not annotations) or outermost ops (CPU:
    CPU time) whose name matches ``pattern``."""
    if device.type == "cuda":
        us = sum(e.device_time for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA
                 and "::" not in e.name and pattern.search(e.name))
    else:
        us = sum(e.cpu_time_total for e in events if _outermost(e, pattern))
    return us / 1e3


def profile_counts(fn: Callable, device: torch.device, big: int,
                   calls: int = PROFILED_CALLS) -> dict[str, Any]:
    """Per call of a warmed-up ``fn`` (the mean of ``calls`` profiled calls): wall ms while
    profiled, host syncs (beyond those of profiling an empty call), large copies, attention ms
    and binattn's part."""
    start = time.perf_counter()
    events = _profiled(fn, device, calls)
    wall_ms = (time.perf_counter() - start) * 1e3 / calls
    syncs = _syncs(events) - _syncs(_profiled(lambda: None, device))
    copies = sum(1 for e in events if e.name in COPY_OPS and any(
        s and torch.Size(s).numel() >= big for s in e.input_shapes))
    return {"profiled_ms": wall_ms, "host_syncs": max(syncs, 0) // calls,
            "copies": copies // calls,
            "attention_ms": kernel_ms(events, device, ATTENTION_KERNEL) / calls,
            "binattn_ms": kernel_ms(events, device, BINATTN_KERNEL) / calls}


# ----- paths -----------------------------------------------------------------------------

def _binarized(built: Built, cache: dict) -> torch.nn.Module:
    if "gm" not in cache:
        from ..binarize_pass import binarize
        cache["gm"] = binarize(built.model, built.args,
                               example_kwargs=built.kwargs or None, copy=False)
    return cache["gm"]


def _drop_in(built: Built, cache: dict) -> torch.nn.Module:
    """A copy of the model switched to binattn's drop-in (the original's paths stay SDPA)."""
    if "drop_in" not in cache:
        model = copy.deepcopy(built.model)
        if built.library == "transformers":
            from ..dropins import hf
            hf.register()
            model.set_attn_implementation("binattn")
        else:  # each layer's own processor wrapped (README's first form; DiT has no
            from ..dropins.diffusers import apply  # set_attn_processor)
            apply(model)
        cache["drop_in"] = model
    return cache["drop_in"]


def _backend(built: Built, cache: dict) -> Callable:
    from .. import backend
    backend.register()  # where binattn is on PYTHONPATH, not installed (no entry point)
    return torch.compile(built.model, backend="binattn")


PATHS: dict[str, Callable[[Built, dict], Callable]] = {
    "original eager": lambda b, c: b.model,
    "original compiled": lambda b, c: torch.compile(b.model),
    "binarized eager": _binarized,
    "binarized compiled": lambda b, c: torch.compile(_binarized(b, c)),
    "backend=binattn": _backend,
    "drop-in eager": _drop_in,
    "drop-in compiled": lambda b, c: torch.compile(_drop_in(b, c)),
}


def paths_for(built: Built, only: Optional[Iterable[str]] = None) -> list[str]:
    """The paths that apply to ``built`` (drop-ins: transformers and diffusers), in order."""
    names = [p for p in PATHS
             if not p.startswith("drop-in") or built.library in DROP_IN_LIBRARIES]
    return [p for p in names if only is None or p in set(only)]


def _free(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error(err: BaseException) -> dict[str, Any]:
    first = (str(err).strip().splitlines() or [""])[0]
    return {"error": f"{type(err).__name__}: {first}"[:300],
            "traceback": traceback.format_exc()[-3000:]}


def _forward(fn: Callable, built: Built) -> Any:
    return fn(*built.args, **built.kwargs)


def prepare(built: Built, paths: Iterable[str], device: torch.device,
            log: Callable[[str], None]) -> tuple[dict[str, Callable], dict[str, dict]]:
    """Each path built and called once (compiled, kernels built): ``(calls, errors)``."""
    calls: dict[str, Callable] = {}
    errors: dict[str, dict] = {}
    cache: dict = {}
    for path in paths:
        start = time.perf_counter()
        try:
            call = functools.partial(_forward, PATHS[path](built, cache), built)
            call()
            sync(device)
            calls[path] = call
            log(f"  {path}: ready in {time.perf_counter() - start:.1f} s")
        except Exception as err:  # a failing path is a row of the table
            errors[path] = _error(err)
    return calls, errors


def time_paths(calls: dict[str, Callable], device: torch.device, budget_ms: float,
               errors: dict[str, dict], rounds: int = ROUNDS) -> dict[str, float]:
    """ms of each path, timed round-robin in ``rounds`` rounds of ``budget_ms / rounds``
    (a load that comes and goes touches every path alike): the minimum of the rounds on CPU,
    their median on CUDA. A path that fails moves to ``errors``."""
    samples: dict[str, list[float]] = {path: [] for path in calls}
    for _ in range(rounds):
        for path in list(calls):
            try:
                samples[path].append(time_ms(calls[path], device, budget_ms / rounds))
            except Exception as err:
                errors[path] = _error(err)
                del calls[path], samples[path]
    pick = min if device.type == "cpu" else statistics.median
    return {path: pick(times) for path, times in samples.items()}


def measure(built: Built, path: str, call: Callable, ms: float, device: torch.device,
            calls: int) -> dict[str, Any]:
    """One timed path's row fields: ms, the profile's counts, the kernels binattn ran (binary
    paths: the dispatcher's report right after the path's profiled calls)."""
    counts = profile_counts(call, device, max(built.q_numel // 3, 1), calls)
    kernels = dispatch.kernel_report() if path in BINARY_PATHS else None
    return {"ms": ms, **counts, "outside_ms": ms - counts["attention_ms"], "kernels": kernels}


# ----- rows and columns ------------------------------------------------------------------

def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def amdahl(share: float, speedup: float) -> float:
    """The whole-model speedup that an attention speedup ``speedup`` allows when attention is
    ``share`` of the time: ``1 / ((1 - share) + share / speedup)``."""
    return 1.0 / ((1.0 - share) + share / speedup)


def derive(rows: list[dict]) -> list[dict]:
    """Fill each timed row's ratios against the compile default and the same-kind original."""
    timed = [r for r in rows if r.get("ms")]
    for row in timed:
        row["attention_share"] = min(row["attention_ms"] / row["profiled_ms"], 1.0)
    by_path = {r["path"]: r for r in timed}
    base = by_path.get(BASELINE)
    share = base["attention_share"] if base else None
    for row in timed:
        kind = "eager" if row["path"].endswith("eager") else "compiled"
        orig = by_path.get(f"original {kind}")
        row["vs_compiled"] = _ratio(base and base["ms"], row["ms"])
        row["vs_original"] = _ratio(orig and orig["ms"], row["ms"])
        row["outside_vs_original"] = _ratio(row["outside_ms"], orig and orig["outside_ms"])
        row["attention_share_default"] = share
        speedup = (_ratio(base["attention_ms"], row["attention_ms"])
                   if base and row["path"] in BINARY_PATHS else None)
        bound = amdahl(share, speedup) if speedup and share is not None else None
        row["attention_speedup"], row["amdahl_bound"] = speedup, bound
        row["of_bound"] = _ratio(row["vs_compiled"], bound)
    return rows


def _print_row(row: dict) -> None:
    print(log_line(row), flush=True)


def run_model(name: str, device: torch.device, size: str, budget_ms: float,
              only: Optional[Iterable[str]] = None,
              on_row: Callable[[dict], None] = _print_row,
              calls: int = PROFILED_CALLS, log: Callable[[str], None] = print) -> list[dict]:
    """Every path of model ``name`` (see :data:`MODELS`) at ``size``: one row each, handed to
    ``on_row`` when measured (failed paths first; the ratios are filled in at the end).
    ``calls``: profiled calls per path; ``log``: progress lines."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    built = build(name, size, device, dtype)
    info = {"model": name, "title": MODELS[name].title, "size": size, "batch": built.batch,
            "tokens": built.tokens, "layers": built.layers, "heads": built.heads,
            "head_dim": built.head_dim, "dtype": str(dtype).replace("torch.", "")}
    paths = paths_for(built, only)
    results: dict[str, dict] = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns, errors = prepare(built, paths, device, log)
        timed = time_paths(fns, device, budget_ms, errors)
        for path in errors:
            on_row({**info, "path": path, **errors[path]})
        for path, ms in timed.items():
            try:
                results[path] = measure(built, path, fns[path], ms, device, calls)
            except Exception as err:
                results[path] = _error(err)
            on_row({**info, "path": path, **results[path]})
    rows = [{**info, "path": p, **results.get(p, errors.get(p, {}))} for p in paths]
    del built, fns
    _free(device)
    return derive(rows)


def log_line(row: dict) -> str:
    """One measured row as a progress line."""
    head = f"  {row['model']:10s} {row['path']:19s}"
    if "error" in row:
        return f"{head} FAILED {row['error']}"
    return (f"{head} {row['ms']:9.3f} ms  attention {row['attention_ms']:8.3f} ms (binattn "
            f"{row['binattn_ms']:.3f})  syncs {row['host_syncs']:3d}  copies {row['copies']:3d}")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def op_call_cost(budget_ms: float) -> dict:
    """CUDA only: one op call at ViT-B's shape, eager µs, CUDA-graphed µs, their difference."""
    from .. import ops
    from ..tvm_kernels.cuda.bench import bench_ms

    q, k, v = (torch.randn(64, 12, 197, 64, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    call = lambda: ops.binary_attention(q, k, v)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    eager = bench_ms(call, int(budget_ms)) * 1e3
    graphed = bench_ms(graph.replay, int(budget_ms)) * 1e3
    return {"shape": [64, 12, 197, 64], "eager_us": eager, "graphed_us": graphed,
            "host_cost_us": eager - graphed}


def run(names: Iterable[str], device: torch.device, size: str, budget_ms: float,
        only: Optional[Iterable[str]] = None, with_op: bool = False,
        on_row: Callable[[dict], None] = _print_row,
        calls: int = PROFILED_CALLS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The table's data: ``{"device", "size", "rows", "op"}`` (``op``: CUDA and ``with_op``)."""
    op = op_call_cost(budget_ms) if with_op and device.type == "cuda" else None
    rows = [row for name in names
            for row in run_model(name, device, size, budget_ms, only, on_row, calls, log)]
    return {"device": device_name(device), "size": size, "rows": rows, "op": op}


# ----- the table -------------------------------------------------------------------------

def _fmt(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _model_table(rows: list[dict]) -> list[str]:
    lines = ["| model | size | dtype | batch | tokens | layers | heads × dim |",
             "|" + "---|" * 7]
    seen = set()
    for r in rows:
        if r["model"] not in seen:
            seen.add(r["model"])
            lines.append(f"| {r['title']} (`{r['model']}`) | {r['size']} | {r['dtype']} | "
                         f"{r['batch']} | {r['tokens']} | {r['layers']} | "
                         f"{r['heads']} × {r['head_dim']} |")
    return lines


COLUMNS = ("model | path | ms | × compile default | × original | attention ms | binattn ms | "
           "attention share | attention speedup | Amdahl bound | of bound | host syncs | "
           "copies | outside ms | outside / original's")


def _path_line(r: dict) -> str:
    if "error" in r:
        error = r["error"].replace("|", "\\|")
        return f"| {r['model']} | {r['path']} | failed: {error} |" + " |" * 12
    return (f"| {r['model']} | {r['path']} | {r['ms']:.2f} | {_fmt(r['vs_compiled'])} | "
            f"{_fmt(r['vs_original'])} | {r['attention_ms']:.2f} | {r['binattn_ms']:.2f} | "
            f"{_fmt(r['attention_share'], '.0%')} | {_fmt(r['attention_speedup'])} | "
            f"{_fmt(r['amdahl_bound'])} | {_fmt(r['of_bound'], '.0%')} | {r['host_syncs']} | "
            f"{r['copies']} | {r['outside_ms']:.2f} | {_fmt(r['outside_vs_original'], '.3f')} |")


def table(rows: list[dict], device: str, op: Optional[dict] = None) -> str:
    """The markdown tables: models, then one line per (model, path), then the op call cost."""
    lines = [f"device: {device}", "", *_model_table(rows), "", f"| {COLUMNS} |",
             "|" + "---|" * (COLUMNS.count("|") + 1)]
    lines += [_path_line(r) for r in rows]
    if op:
        lines += ["", "| op call (64,12,197,64) | eager µs | CUDA-graphed µs | host cost µs |",
                  "|---|---|---|---|",
                  f"| binattn.ops.binary_attention | {op['eager_us']:.1f} | "
                  f"{op['graphed_us']:.1f} | {op['host_cost_us']:.1f} |"]
    return "\n".join(lines)
