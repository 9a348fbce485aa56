"""The CPU kernels' parallel loops on torch's OpenMP pool (``tvm_kernels/cpu/threads.py``).

Real TVM builds and the real compiled launcher: each kernel library's launcher pointer is
repointed, the launcher runs every task once on torch's thread count, and outputs (forward and
backward kernels) are bit-identical to TVM's own pool. A machine without what the launcher
needs falls back to TVM's pool and says why.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

import binattn
from binattn.tvm_kernels.cpu import threads

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

TASK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class GroupEnv(ctypes.Structure):
    _fields_ = [("sync_handle", ctypes.c_void_p), ("num_task", ctypes.c_int32)]


@pytest.fixture
def pool_env(monkeypatch):
    """Set BINATTN_CPU_THREADS and repoint the loaded kernels; restored after the test."""
    def use(name: str) -> None:
        monkeypatch.setenv(threads.ENV, name)
        threads.readopt()

    yield use
    monkeypatch.delenv(threads.ENV, raising=False)
    threads.readopt()


def test_the_launcher_runs_each_task_once_on_torchs_thread_count():
    launcher = threads._launcher()
    assert launcher is not None, threads.pool()
    seen: list[tuple[int, int]] = []

    @TASK
    def body(task_id, penv, cdata):
        seen.append((task_id, ctypes.cast(penv, ctypes.POINTER(GroupEnv)).contents.num_task))
        return 7 if task_id == 0 and cdata else 0

    previous = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            seen.clear()
            assert launcher.binattn_parallel_launch(body, None, 0) == 0
            assert sorted(seen) == [(i, n) for i in range(n)]
        seen.clear()   # a task's non-zero result is the launch's result
        assert launcher.binattn_parallel_launch(body, ctypes.c_void_p(1), 0) == 7
    finally:
        torch.set_num_threads(previous)


def _forward_and_grads(seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, 77, 40, generator=gen, requires_grad=True) for _ in range(3))
    out = binattn.ops.binary_attention(q, k, v, is_causal=True)
    out.backward(torch.randn(out.shape, generator=gen))
    return out.detach(), q.grad, k.grad, v.grad


def test_outputs_and_gradients_are_bit_identical_on_both_pools(pool_env):
    pool_env("torch")
    on_torch = _forward_and_grads(0)
    report = binattn.ops.kernel_report()
    assert report["binary_attention/cpu"].startswith("tvm-llvm")
    assert report["binary_attention_backward/cpu"].startswith("tvm-llvm")
    launch = ctypes.cast(threads._launcher().binattn_parallel_launch, ctypes.c_void_p).value
    slots = [ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch").value
             for lib, _ in threads._adopted.values()]
    assert slots and all(slot == launch for slot in slots)
    pool_env("tvm")
    assert threads.pool() == ("tvm", f"{threads.ENV}=tvm")
    assert all(ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch").value == original
               ["__TVMBackendParallelLaunch"] for lib, original in threads._adopted.values())
    on_tvm = _forward_and_grads(0)
    for a, b in zip(on_torch, on_tvm):
        assert torch.equal(a, b)


def test_a_bad_pool_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(threads.ENV, "openmp")
    with pytest.raises(ValueError, match="BINATTN_CPU_THREADS must be one of"):
        threads.pool()


def test_without_a_compiler_the_kernels_keep_tvms_pool_and_say_why(monkeypatch, tmp_path):
    monkeypatch.setattr(threads, "_state", {})
    monkeypatch.setenv("BINATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="TVM's thread pool, not torch's"):
        name, why = threads.pool()
    assert name == "tvm" and "could not compile the OpenMP launcher" in why
    assert threads.count() >= 1
