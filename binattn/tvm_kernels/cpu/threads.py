"""Which threads run the CPU kernels' parallel loops: torch's OpenMP pool (default) or TVM's.

Why: a TVM-built kernel runs its ``T.parallel`` loop through ``TVMBackendParallelLaunch``,
TVM's own thread pool. In a model, every binattn kernel sits between torch ops that run on
torch's OpenMP pool, whose threads keep spinning for a while after each parallel op (GNU
libgomp's default wait policy). Two pools of busy threads on the same cores starve each other:
on this 2-core machine a binary attention call that takes 3.4 ms of CPU on one thread took
39–52 ms of wall time with two threads in each pool, 8 ms once OpenMP was told not to spin.

What it does: each kernel library that TVM builds for the CPU holds a function pointer,
``__TVMBackendParallelLaunch``, that the loader points at TVM's pool. :func:`adopt` repoints
it at a 20-line launcher (compiled once per machine with the system C compiler, cached beside
the kernels) that runs the loop's tasks as one ``GOMP_parallel`` region on the OpenMP runtime
torch itself loaded — the same threads, the same ``torch.set_num_threads``. Both launchers
call the same task function with the same task split, so outputs are bit-identical.

``BINATTN_CPU_THREADS=tvm`` keeps TVM's pool (``TVM_NUM_THREADS`` then sets its size). Where
torch's parallel backend is not OpenMP, no OpenMP runtime is found in the process, or no C
compiler is there, the kernels keep TVM's pool and :func:`pool` says why (the CLI's
``binattn info`` prints it). What it does not: build kernels (``build``) or choose how many
tasks a kernel splits into (each kernel's schedule).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..._files import atomic_output, user_cache_dir

ENV = "BINATTN_CPU_THREADS"
POOLS = ("torch", "tvm")

# TVM's C ABI (include/tvm/runtime/c_backend_api.h): a parallel loop body is called once per
# task with the task's id and the group size; the launcher returns the first non-zero result.
LAUNCHER_SOURCE = r"""
#include <stdint.h>
typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*tvm_lambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
typedef void (*gomp_parallel_t)(void (*fn)(void*), void* data, unsigned nthreads, unsigned flags);
typedef void (*gomp_barrier_t)(void);
typedef int (*omp_int_t)(void);

static gomp_parallel_t gomp_parallel;
static gomp_barrier_t gomp_barrier;
static omp_int_t thread_num, num_threads, max_threads;

void binattn_omp_bind(void* parallel, void* barrier, void* tnum, void* tcount, void* tmax) {
  gomp_parallel = (gomp_parallel_t)parallel; gomp_barrier = (gomp_barrier_t)barrier;
  thread_num = (omp_int_t)tnum; num_threads = (omp_int_t)tcount; max_threads = (omp_int_t)tmax;
}

typedef struct { tvm_lambda body; void* cdata; int result; } job_t;

static void run_task(void* data) {
  job_t* job = (job_t*)data;
  TVMParallelGroupEnv env = {0, num_threads()};
  int rv = job->body(thread_num(), &env, job->cdata);
  if (rv != 0) __atomic_store_n(&job->result, rv, __ATOMIC_RELAXED);
}

int binattn_parallel_launch(tvm_lambda body, void* cdata, int num_task) {
  job_t job = {body, cdata, 0};
  unsigned n = num_task > 0 ? (unsigned)num_task : (unsigned)max_threads();
  gomp_parallel(run_task, &job, n, 0);
  return job.result;
}

int binattn_parallel_barrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id; (void)penv;
  gomp_barrier();
  return 0;
}
"""

_SLOTS = {"__TVMBackendParallelLaunch": "binattn_parallel_launch",
          "__TVMBackendParallelBarrier": "binattn_parallel_barrier"}
_lock = threading.RLock()
_state: dict = {}          # "launcher": CDLL or None, "why": reason TVM's pool is kept
_adopted: dict[str, tuple[ctypes.CDLL, dict[str, int]]] = {}   # path → (lib, original slots)


def requested_pool() -> str:
    """The pool ``BINATTN_CPU_THREADS`` asks for (default ``torch``)."""
    value = os.environ.get(ENV, "torch").strip().lower() or "torch"
    if value not in POOLS:
        raise ValueError(f"{ENV} must be one of {POOLS}, got {value!r}")
    return value


def pool() -> tuple[str, str]:
    """(pool the kernels use, why): ``("torch", "...")`` or ``("tvm", reason)``."""
    if requested_pool() == "tvm":
        return "tvm", f"{ENV}=tvm"
    launcher = _launcher()
    if launcher is None:
        return "tvm", _state["why"]
    return "torch", f"torch's OpenMP pool ({torch.get_num_threads()} threads)"


def count() -> int:
    """Threads a kernel's parallel loop runs on (what task splits should plan for)."""
    if pool()[0] == "torch":
        return torch.get_num_threads()
    from .target import num_cores

    return int(os.environ.get("TVM_NUM_THREADS") or num_cores())


def adopt(library: str | os.PathLike) -> bool:
    """Point the parallel launcher of the loaded kernel library at ``library`` to the pool
    :func:`pool` names. Idempotent; returns True when torch's pool runs it."""
    path = str(Path(library).resolve())
    with _lock:
        if path not in _adopted:
            lib = ctypes.CDLL(path)   # the handle the kernel loader holds (dlopen dedupes)
            slots = {name: _slot(lib, name).value for name in _SLOTS if _has(lib, name)}
            _adopted[path] = (lib, slots)
        lib, slots = _adopted[path]
        launcher = _launcher() if requested_pool() == "torch" else None
        for name, original in slots.items():
            target = (ctypes.cast(getattr(launcher, _SLOTS[name]), ctypes.c_void_p).value
                      if launcher is not None else original)
            _slot(lib, name).value = target
        return launcher is not None


def readopt() -> None:
    """Apply the current ``BINATTN_CPU_THREADS`` to every library already loaded (for
    benchmarks that compare the pools in one process, and tests)."""
    for path in list(_adopted):
        adopt(path)


def _has(lib: ctypes.CDLL, name: str) -> bool:
    try:
        _slot(lib, name)
        return True
    except ValueError:
        return False


def _slot(lib: ctypes.CDLL, name: str) -> ctypes.c_void_p:
    return ctypes.c_void_p.in_dll(lib, name)


def _launcher() -> Optional[ctypes.CDLL]:
    """The compiled launcher bound to torch's OpenMP runtime, or None (``_state["why"]``)."""
    with _lock:
        if "launcher" not in _state:
            _state["launcher"], _state["why"] = _load_launcher()
            if _state["launcher"] is None:
                warnings.warn(f"binattn: CPU kernels run on TVM's thread pool, not torch's: "
                              f"{_state['why']}", RuntimeWarning, stacklevel=3)
        return _state["launcher"]


def _load_launcher() -> tuple[Optional[ctypes.CDLL], str]:
    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return None, "torch's parallel backend is not OpenMP"
    runtime = openmp_runtime()
    if runtime is None:
        return None, "no OpenMP runtime found among the process's libraries"
    try:
        path = _compiled_launcher()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        return None, f"could not compile the OpenMP launcher ({err})"
    omp = ctypes.CDLL(runtime)
    launcher = ctypes.CDLL(str(path))
    names = ("GOMP_parallel", "GOMP_barrier", "omp_get_thread_num", "omp_get_num_threads",
             "omp_get_max_threads")
    try:
        pointers = [ctypes.cast(getattr(omp, name), ctypes.c_void_p) for name in names]
    except AttributeError as err:
        return None, f"{runtime} lacks {err}"
    launcher.binattn_omp_bind(*pointers)
    return launcher, ""


def openmp_runtime() -> Optional[str]:
    """Path of the OpenMP runtime loaded in this process (torch's), from /proc/self/maps."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp5", "libomp")) and ".so" in name:
            return path
    return None


def _compiled_launcher() -> Path:
    """The launcher's shared library, compiled once per machine (source + compiler hash)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    digest = hashlib.sha256((LAUNCHER_SOURCE + compiler).encode()).hexdigest()[:16]
    path = user_cache_dir() / "kernels" / f"omp_launcher-{digest}.so"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "launcher.c"
        source.write_text(LAUNCHER_SOURCE)
        with atomic_output(path) as out:
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", str(source), "-o", str(out)],
                           check=True, capture_output=True, timeout=120)
    return path
