"""The on-disk kernel cache: miss → build, hit from memory and disk, corrupt entry → rebuild."""
import subprocess
import sys

import pytest
import torch

import tvm  # noqa: F401  (a test dependency: a missing install must fail, not skip)

from binattn.tvm_kernels.cpu import build as cpu_build, kernels as cpu_kernels  # noqa: E402
from binattn.tvm_kernels.cache import CacheKey, KernelCache  # noqa: E402

KEY = CacheKey("sign_pack", "llvm-test", "w2", "float32", "rows64")


def build_sign_pack():
    return cpu_build.compile_module(cpu_kernels.sign_pack_module(2))


def run(module):
    x = torch.randn(1, 1, 5, 40)
    bits = torch.full((1, 1, 5, 2), -7, dtype=torch.int32)
    pops = torch.full((1, 1, 5), -7, dtype=torch.int32)
    module["main"](x, bits, pops, torch.empty(1, 1, 5))
    assert torch.equal(pops, (x >= 0).sum(-1, dtype=torch.int32))


def test_miss_then_memory_and_disk_hits(tmp_path):
    cache = KernelCache(tmp_path)
    builds = []
    run(cache.get(KEY, lambda: builds.append(1) or build_sign_pack()))
    run(cache.get(KEY, lambda: builds.append(1) or build_sign_pack()))
    assert builds == [1] and cache.stats.memory_hits == 1 and cache.path(KEY).exists()
    fresh = KernelCache(tmp_path)  # a new process: the library comes from disk
    run(fresh.get(KEY, lambda: pytest.fail("must not rebuild")))
    assert fresh.stats.disk_hits == 1 and fresh.entries()[0]["bucket"] == "w2"


def test_every_key_field_changes_the_entry():
    variants = [CacheKey("sign_pack", "llvm-other", "w2", "float32", "rows64"),
                CacheKey("sign_pack", "llvm-test", "w3", "float32", "rows64"),
                CacheKey("sign_pack", "llvm-test", "w2", "float16", "rows64"),
                CacheKey("sign_pack", "llvm-test", "w2", "float32", "rows32")]
    names = {k.filename() for k in variants} | {KEY.filename()}
    assert len(names) == 5


def test_other_kernel_sources_never_load_a_stale_library(tmp_path, monkeypatch):
    from binattn.tvm_kernels import cache as cache_mod

    cache = KernelCache(tmp_path)
    run(cache.get(KEY, build_sign_pack))
    # as if binattn's kernel code (or TVM) had changed since that library was built
    monkeypatch.setattr(cache_mod, "_fingerprint", "0" * 16)
    builds = []
    run(KernelCache(tmp_path).get(KEY, lambda: builds.append(1) or build_sign_pack()))
    assert builds == [1]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_entry_is_rebuilt(tmp_path, damage):
    # the entry is written by another process (a library loaded here must not be damaged:
    # overwriting a mapped file would crash this process, not test the cache)
    code = ("import sys; sys.path.insert(0, %r); from tests.test_tvm_cpu_cache import *; "
            "KernelCache(__import__('pathlib').Path(%r)).get(KEY, build_sign_pack)"
            % (str(__import__("pathlib").Path(__file__).parents[1]), str(tmp_path)))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    path = KernelCache(tmp_path).path(KEY)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"\x7fELF" + b"x" * 999,
                      "empty": b""}[damage])
    cache = KernelCache(tmp_path)
    run(cache.get(KEY, build_sign_pack))
    assert cache.stats.corrupt_rebuilt == 1 and cache.stats.builds == 1


def test_failed_build_leaves_nothing_at_the_final_path(tmp_path):
    cache = KernelCache(tmp_path)

    def broken():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get(KEY, broken)
    assert not cache.path(KEY).exists() and not list(tmp_path.glob(".*.so"))
