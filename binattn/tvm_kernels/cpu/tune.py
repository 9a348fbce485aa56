"""Autotuning of binattn's CPU kernels; the best schedules go to the tuning database.

Two methods:
* ``knobs`` (default, both kernels): search the template's named knobs (``cpu_knobs``): build
  each candidate with TVM and time it with TVM's own timer (``time_evaluator``), locally or on a
  remote device through TVM's RPC tracker (``Measurer``);
* ``meta-schedule`` (score kernel): TVM's ``meta_schedule.tune_tir`` on the TE workload, with
  its JSON database stored under ``<db>/meta_schedule/<workload>``; local builder and runner, or
  meta_schedule's ``RPCRunner`` through the tracker.

Results are stored with ``TuningDatabase.store`` (kept only if faster than the stored record);
later kernel builds (``binattn.tvm_kernels.cpu.build``) read them. What it does not: parse the
command line (``binattn.cli.tune_cmd``) or run kernels for users.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from . import kernels as cpu_kernels
from .build import EXACT_SCORES_MIN_OUTPUT, scores_tag
from .target import host_target, target_key
from ...schedules.cpu import knobs as cpu_knobs
from ...schedules.database import TuningDatabase


@dataclass
class RPCSettings:
    """Where remote measurements run: a TVM RPC tracker and the device key to request."""

    tracker_host: str
    tracker_port: int
    key: str
    session_timeout: int = 600

    @classmethod
    def parse(cls, tracker: str, key: str) -> "RPCSettings":
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--rpc-tracker must be host:port, got {tracker!r}")
        if not key:
            raise ValueError("--rpc-key is required with --rpc-tracker")
        return cls(host, int(port), key)


class Measurer:
    """Times a built library's ``main`` on fresh random arguments with TVM's timer."""

    def __init__(self, rpc: Optional[RPCSettings] = None, repeat: int = 3):
        self.rpc = rpc
        self.repeat = repeat
        self._remote = None

    def _session(self):
        import tvm.rpc

        if self._remote is None:
            tracker = tvm.rpc.connect_tracker(self.rpc.tracker_host, self.rpc.tracker_port)
            self._remote = tracker.request(self.rpc.key, priority=1,
                                           session_timeout=self.rpc.session_timeout)
        return self._remote

    def seconds(self, executable, make_args: Callable[[object], list]) -> float:
        """Median run time of ``main`` in seconds."""
        import tvm

        if self.rpc is None:
            module, dev = executable.jit(), tvm.cpu()
        else:
            remote = self._session()
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "candidate.so")
                executable.export_library(path)
                remote.upload(path)
            module, dev = remote.load_module("candidate.so"), remote.cpu()
        args = make_args(dev)
        timer = module.time_evaluator("main", dev, number=1, repeat=self.repeat,
                                      min_repeat_ms=50)
        return float(timer(*args).median)


def _tensor(array: np.ndarray, dev):
    import tvm

    return tvm.runtime.tensor(array, dev)


@dataclass
class AttentionShape:
    batch: int = 1
    heads: int = 8
    n: int = 4096
    head_dim: int = 64

    @property
    def words(self) -> int:
        return (self.head_dim + 31) // 32


def attention_args(shape: AttentionShape, wl: cpu_kernels.AttentionWorkload,
                   knobs: cpu_knobs.AttentionKnobs) -> Callable[[object], list]:
    """Random arguments of the attention kernel (padded to the knobs' blocks)."""
    rng = np.random.default_rng(0)
    bq, bk = knobs.block_q, knobs.block_k
    nq, nk = -(-shape.n // bq) * bq, -(-shape.n // bk) * bk
    b, h, w, dv, dv16 = shape.batch, shape.heads, wl.words, wl.value_dim, wl.dv16

    def make(dev):
        words = lambda *s: rng.integers(  # noqa: E731
            -2**31, 2**31 - 1, size=s, dtype=np.int64).astype(np.int32)
        args = [words(b, h, nq, w), words(b, h, w, nk)]
        if wl.pv8:
            args += [rng.integers(-127, 128, size=(b, h, nk // 4, dv16, 4)).astype(np.int8),
                     np.full((b, h, dv16), 1e-4, np.float32)]
        else:
            args.append(rng.standard_normal((b, h, shape.n, dv), dtype=np.float32))
        args.append(np.full((b, h), 0.1, np.float32))
        if wl.add_bcast is not None:
            dims = [1 if bc else full for bc, full in zip(wl.add_bcast, (b, h, nq))]
            args.append(0.1 * rng.standard_normal((*dims, nk), dtype=np.float32))
        else:
            args.append(np.zeros((1, 1, 1, 1), np.float32))  # no additive tensor: unread
        args.append(np.zeros((b, h, shape.n, dv), np.float32))
        return [_tensor(a, dev) for a in args] + [shape.n, shape.head_dim]

    return make


def scores_args(batch: int, n_q: int, n_k: int, words: int, head_dim: int) -> Callable:
    rng = np.random.default_rng(0)

    def make(dev):
        q = rng.integers(0, 2**31 - 1, size=(batch, n_q, words)).astype(np.int32)
        k = rng.integers(0, 2**31 - 1, size=(batch, n_k, words)).astype(np.int32)
        return [_tensor(q, dev), _tensor(k, dev),
                _tensor(np.zeros((batch, n_q, n_k), np.int32), dev), head_dim]

    return make


@dataclass
class TrialResult:
    knobs: dict
    ms: float
    error: Optional[str] = None


def _candidates(default, space: list, trials: int, seed: int = 0) -> list:
    """The default first, then a random sample of the space (no repeats)."""
    rest = [c for c in space if c != default]
    random.Random(seed).shuffle(rest)
    return [default] + rest[:max(trials - 1, 0)]


def search_knobs(candidates: Iterable, build: Callable, make_args: Callable,
                 measurer: Measurer, progress: Optional[Callable[[TrialResult], None]] = None
                 ) -> list[TrialResult]:
    """Build and time each candidate; failures are recorded, not raised."""
    results = []
    for knobs in candidates:
        try:
            seconds = measurer.seconds(build(knobs), make_args(knobs))
            result = TrialResult(knobs.to_dict(), seconds * 1e3)
        except Exception as err:  # noqa: BLE001 - a bad candidate must not stop the search
            result = TrialResult(knobs.to_dict(), float("inf"),
                                 f"{type(err).__name__}: {err}"[:200])
        results.append(result)
        if progress:
            progress(result)
    return results


def _store_best(db: TuningDatabase, workload: str, results: list[TrialResult],
                method: str) -> Optional[TrialResult]:
    ok = [r for r in results if r.error is None]
    if not ok:
        return None
    best = min(ok, key=lambda r: r.ms)
    db.store(target_key(), workload, {"knobs": best.knobs, "ms": best.ms, "method": method,
                                      "trials": len(results), "ms_workdir": None,
                                      "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())})
    return best


def tune_attention(shape: AttentionShape, trials: int, db: TuningDatabase, *,
                   causal: bool = False, pv8: bool = False, measurer: Optional[Measurer] = None,
                   progress: Optional[Callable[[TrialResult], None]] = None):
    """Knob search for the fused attention kernel; returns (workload tag, results, best)."""
    import tvm

    measurer = measurer or Measurer()
    wl = cpu_kernels.AttentionWorkload(shape.words, shape.head_dim, causal, None, pv8)
    target = host_target()
    candidates = _candidates(cpu_knobs.default_attention(wl.value_dim),
                             cpu_knobs.attention_space(), trials)
    results = search_knobs(
        candidates, lambda kn: tvm.compile(cpu_kernels.attention_module(wl, kn), target=target),
        lambda kn: attention_args(shape, wl, kn), measurer, progress)
    return wl.tag(), results, _store_best(db, wl.tag(), results, "knobs")


def tune_scores_knobs(n_q: int, n_k: int, head_dim: int, trials: int, db: TuningDatabase, *,
                      batch: int = 1, measurer: Optional[Measurer] = None,
                      progress: Optional[Callable[[TrialResult], None]] = None):
    """Knob search for the exact-shape score kernel."""
    import tvm

    measurer = measurer or Measurer()
    words = (head_dim + 31) // 32
    target = host_target()
    # tune the kernel the ops will use: exact shape when large, else the symbolic one
    exact = n_q * n_k >= EXACT_SCORES_MIN_OUTPUT
    dims = (n_q, n_k) if exact else (None, None)
    candidates = _candidates(cpu_knobs.DEFAULT_SCORE, cpu_knobs.score_space(), trials)
    results = search_knobs(
        candidates,
        lambda kn: tvm.compile(cpu_kernels.scores_module(words, kn, *dims), target=target),
        lambda kn: scores_args(batch, n_q, n_k, words, head_dim), measurer, progress)
    tag = scores_tag(words, *dims)
    return tag, results, _store_best(db, tag, results, "knobs")


def tune_scores_meta_schedule(n_q: int, n_k: int, head_dim: int, trials: int,
                              db: TuningDatabase, *, batch: int = 1,
                              rpc: Optional[RPCSettings] = None, build_timeout: int = 300):
    """TVM meta_schedule on the exact-shape score workload; returns (tag, best ms or None)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    words = (head_dim + 31) // 32
    tag = scores_tag(words, n_q, n_k)
    workdir = Path("meta_schedule") / target_key() / f"{tag}_b{batch}_d{head_dim}"
    mod = tvm.IRModule({"main": cpu_kernels.scores_te(words, n_q, n_k, batch, head_dim)})
    runner = "local"
    if rpc is not None:
        runner = ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(
            tracker_host=rpc.tracker_host, tracker_port=rpc.tracker_port,
            tracker_key=rpc.key, session_timeout_sec=rpc.session_timeout))
    # a loaded 2-core machine needs far more than meta_schedule's default 30 s per build
    builder = ms.builder.LocalBuilder(timeout_sec=build_timeout)
    database = ms.tune_tir(mod, host_target(), work_dir=str(db.root / workdir),
                           max_trials_global=trials, num_trials_per_iter=min(trials, 16),
                           cost_model="random", builder=builder, runner=runner)
    records = database.get_top_k(database.commit_workload(mod), 1)
    if not records:
        return tag, None
    best_ms = float(np.mean([float(x) for x in records[0].run_secs])) * 1e3
    db.store(target_key(), tag, {"knobs": {}, "ms": best_ms, "method": "meta_schedule",
                                 "batch": batch, "head_dim": head_dim, "trials": trials,
                                 "ms_workdir": str(workdir)})
    return tag, best_ms


def meta_schedule_best_module(workdir: Path, func) -> "tvm.IRModule":
    """The tuned module of ``func`` from a meta_schedule JSON database directory."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(
        path_workload=str(workdir / "database_workload.json"),
        path_tuning_record=str(workdir / "database_tuning_record.json"))
    sch = ms.tir_integration.compile_tir(database, tvm.IRModule({"main": func}), host_target())
    if sch is None:
        raise RuntimeError(f"no tuned schedule for this workload in {workdir}")
    return sch.mod
