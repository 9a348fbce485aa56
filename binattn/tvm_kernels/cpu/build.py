"""Build (or fetch from the cache) binattn's LLVM kernels with the best known schedule.

What it does: for a workload, picks the knobs (tuning database record for this target, else
the template default), builds the TensorIR module from ``cpu_kernels`` with ``tvm.compile`` for
the host target, and returns the kernel's packed function through the on-disk ``KernelCache``.
Build errors are raised as ``KernelBuildError`` (the dispatcher turns them into a fallback
reason). What it does not: prepare tensors or call kernels (``cpu_dispatch``), or tune.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from ...schedules.cpu import knobs as cpu_knobs
from ...schedules.database import active_db
from . import kernels as cpu_kernels, threads
from ..cache import CacheKey, KernelCache, default_cache
from .target import host_target, target_key


class KernelBuildError(RuntimeError):
    """TVM could not build a kernel (message names the kernel and the cause)."""


_cache_override: Optional[KernelCache] = None


def kernel_cache() -> KernelCache:
    return _cache_override or default_cache()


def use_cache(cache: Optional[KernelCache]) -> None:
    """Route builds through another cache (tests, benchmarks); None restores the default."""
    global _cache_override
    _cache_override = cache


def compile_module(mod) -> Any:
    """tvm.compile for this host (returns an Executable with export_library)."""
    import tvm

    return tvm.compile(mod, target=host_target())


def _get(key: CacheKey, make_module: Callable[[], Any]) -> Any:
    """The kernel's ``main``, built or loaded through the cache, its parallel loops on the
    pool ``threads.pool()`` names."""
    try:
        cache = kernel_cache()
        module = cache.get(key, lambda: compile_module(make_module()))
        threads.adopt(cache.path(key))
        return module["main"]
    except Exception as err:  # noqa: BLE001 - report any TVM failure as one error type
        raise KernelBuildError(f"{key.kernel} ({key.bucket}, {key.schedule}): "
                               f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"
                               ) from err


def attention_knobs(wl: cpu_kernels.AttentionWorkload) -> cpu_knobs.AttentionKnobs:
    """Tuned knobs for this workload on this target (one record serves every dtype), else the
    default for its value dim."""
    record = active_db().lookup(target_key(), wl.tag())
    if record is not None:
        try:
            knobs = cpu_knobs.AttentionKnobs(**record["knobs"])
            knobs.check()
            return knobs
        except (TypeError, ValueError, KeyError):
            pass
    return cpu_knobs.default_attention(wl.value_dim)


# exact-shape score kernels only for large outputs (they are ~2x faster there); smaller
# shapes share one symbolic kernel per word count, so arbitrary shapes cost one build
EXACT_SCORES_MIN_OUTPUT = 1 << 20


def scores_tag(words: int, n_q: Optional[int] = None, n_k: Optional[int] = None) -> str:
    """Workload name of the score kernel; None = symbolic dim."""
    dims = "any" if n_q is None else f"m{n_q}_n{n_k}"
    return f"scores_w{words}_{dims}"


def score_knobs(tag: str) -> cpu_knobs.ScoreKnobs:
    record = active_db().lookup(target_key(), tag)
    if record is not None and record.get("method") == "knobs":
        try:
            return cpu_knobs.ScoreKnobs(**record["knobs"])
        except (TypeError, KeyError):
            pass
    return cpu_knobs.DEFAULT_SCORE


_attention_memo: dict[tuple, tuple[Any, Any]] = {}


def attention_kernel(wl: cpu_kernels.AttentionWorkload,
                     knobs: Optional[cpu_knobs.AttentionKnobs] = None) -> tuple[Any, Any]:
    """(packed function, knobs used) of the fused attention kernel for this workload.

    Remembered per (workload, knobs, cache, tuning records): a call that finds it pays a dict
    lookup, not the knob lookup and the cache key's hash (50 µs)."""
    memo = (wl, knobs, id(kernel_cache()), active_db().version())
    hit = _attention_memo.get(memo)
    if hit is None:
        chosen = knobs or attention_knobs(wl)
        key = CacheKey("attention", target_key(), wl.tag(),
                       f"{'pv8' if wl.pv8 else 'pv32'}-{wl.dtype}", chosen.key())
        hit = _attention_memo[memo] = (_get(key, lambda: cpu_kernels.attention_module(
            wl, chosen)), chosen)
    return hit


@functools.lru_cache(maxsize=None)
def quantize_v_kernel(value_dim: int, dtype: str = "float32") -> Any:
    """V (``dtype``, strided) → s8 in the VNNI layout + per-channel scales, called as
    ``fn(v, v8, vscale)``."""
    key = CacheKey("quantize_v", target_key(), f"dv{value_dim}", dtype, "tasks_bh")
    return _get(key, lambda: cpu_kernels.quantize_v_module(value_dim, dtype))


@functools.lru_cache(maxsize=None)
def sign_pack_kernel(words: int, dtype: str = "float32") -> Any:
    """sign_pack of ``[B, H, N, D]`` (``dtype``, strided) for any D with this many words."""
    key = CacheKey("sign_pack", target_key(), f"w{words}", dtype, "rows64")
    return _get(key, lambda: cpu_kernels.sign_pack_module(words, dtype))


@functools.lru_cache(maxsize=None)
def prepare_kernel(words: int, dtype: str, scale_mode: str) -> Any:
    """q and k → their packed words, magnitudes and score multiplier, in one call
    (``kernels.prepare_module``), for any D with this many words."""
    key = CacheKey("prepare", target_key(), f"w{words}_{scale_mode}", dtype, "rows64")
    return _get(key, lambda: cpu_kernels.prepare_module(words, dtype, scale_mode))


def scores_kernel(n_q: int, n_k: int, words: int, batch: Optional[int] = None,
                  head_dim: Optional[int] = None) -> Any:
    """The score kernel, called as ``fn(q [B, Nq, W], k [B, Nk, W], out [B, Nq, Nk], D)``.

    Large shapes get an exact-shape kernel (meta_schedule's best if ``binattn tune`` stored one,
    else tuned or default knobs); small ones share the symbolic kernel for their word count.
    """
    exact = n_q * n_k >= EXACT_SCORES_MIN_OUTPUT
    tag = scores_tag(words, n_q, n_k) if exact else scores_tag(words)
    record = active_db().lookup(target_key(), tag)
    if (exact and record is not None and record.get("method") == "meta_schedule"
            and record.get("batch") == batch and record.get("head_dim") == head_dim):
        key = CacheKey("scores", target_key(), f"{tag}_b{batch}_d{head_dim}", "int32",
                       f"ms:{record['ms_workdir']}")
        fn = _get(key, lambda: _meta_schedule_module(record, words, n_q, n_k, batch, head_dim))
        return lambda q, k, out, d: fn(q, k, out)  # D is baked into the tuned workload
    knobs = score_knobs(tag)
    key = CacheKey("scores", target_key(), tag, "int32", knobs.key())
    return _get(key, lambda: cpu_kernels.scores_module(words, knobs, n_q if exact else None,
                                                        n_k if exact else None))


def _meta_schedule_module(record: dict, words: int, n_q: int, n_k: int, batch: int,
                          head_dim: int):
    """Apply the meta_schedule database's best trace to the score workload."""
    from .tune import meta_schedule_best_module

    return meta_schedule_best_module(active_db().root / record["ms_workdir"],
                                     cpu_kernels.scores_te(words, n_q, n_k, batch, head_dim))
