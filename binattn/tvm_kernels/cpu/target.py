"""The LLVM target binattn builds CPU kernels for: this host's CPU, as TVM 0.27 wants it.

What it does: ``host_target()`` returns ``Target({"kind": "llvm", "mcpu": <this CPU>,
"num-cores": <cores>})`` (a JSON-dict target: 0.27 rejects "llvm -mcpu=..." strings, and
``mcpu=native`` silently falls back to generic code, see TVM_NOTES §0), ``target_key()`` a short
stable string for cache keys, ``cpu_features()`` LLVM's feature names for the CPU and
``has_vnni()`` whether u8×s8 dot products (AVX-512 VNNI) exist.
``BINATTN_LLVM_MCPU`` overrides the CPU name (e.g. ``x86-64-v3`` for portable builds).

What it does not: build anything.
"""
from __future__ import annotations

import functools
import os

import tvm


@functools.lru_cache(maxsize=None)
def host_mcpu() -> str:
    """LLVM's name for this CPU (e.g. ``znver4``), or the ``BINATTN_LLVM_MCPU`` override."""
    return os.environ.get("BINATTN_LLVM_MCPU") or tvm.target.codegen.llvm_get_system_cpu()


def num_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def use_all_cores() -> None:
    """Give TVM's thread pool every core this process may use, unless TVM_NUM_THREADS is set.

    TVM's own default picked 1 thread on this 2-core VM (the fused kernel ran 1.7× slower);
    the variable must be set before the pool starts, i.e. before the first kernel call.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(num_cores()))


def host_target(mcpu: str | None = None) -> tvm.target.Target:
    """The llvm target for this machine (num-cores is required by meta_schedule)."""
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or host_mcpu(),
                              "num-cores": num_cores()})


def target_key(target: tvm.target.Target | None = None) -> str:
    """Stable short description of a target for cache keys: kind + mcpu."""
    if target is None:
        return _host_target_key()
    return f"{target.kind.name}-{target.attrs.get('mcpu', 'generic')}"


@functools.lru_cache(maxsize=None)
def _host_target_key() -> str:
    return target_key(host_target())


@functools.lru_cache(maxsize=None)
def cpu_features(mcpu: str | None = None) -> frozenset:
    """LLVM's feature names of this CPU (or ``mcpu``), e.g. ``avx512vnni``; empty if unknown."""
    try:
        features = tvm.target.codegen.llvm_get_cpu_features(
            tvm.target.Target({"kind": "llvm", "mcpu": mcpu or host_mcpu()}))
        return frozenset(str(f) for f in features)
    except Exception:  # noqa: BLE001 - unknown CPU name: assume no optional feature
        return frozenset()


def has_vnni(mcpu: str | None = None) -> bool:
    """True if the CPU has AVX-512 VNNI (``vpdpbusd``), read from LLVM's feature list."""
    return "avx512vnni" in cpu_features(mcpu)
