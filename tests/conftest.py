"""Fixtures shared by binattn's tests: the op-case catalogue (``op_cases``) as a parameter.

A test that takes an ``op_case`` argument runs once per case of ``op_cases.CASES``, selected by
its ``@pytest.mark.op_cases(kernel=..., naive=..., exclude=...)`` marker (the arguments of
``op_cases.names``; no marker: every case); ``op_case`` is the case's name (the test id).
``case_gen`` is a CPU generator seeded from the test's id, so each case draws the same inputs
on every run. ``tvm_cpu_cache`` gives a test module its own CPU kernel cache in a temporary
folder (``pytestmark = pytest.mark.usefixtures("tvm_cpu_cache")``). What it does not: hold
cases (``op_cases``) or any device-specific fixture (``test_gpu_kernels`` keeps its CUDA
generator).
"""
from __future__ import annotations

import zlib

import pytest
import torch

from .op_cases import names


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "op_cases(kernel=None, naive=None, exclude=()): the "
                            "op cases an ``op_case`` argument runs over (op_cases.names)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "op_case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("op_cases")
        metafunc.parametrize("op_case", names(**(marker.kwargs if marker else {})))


@pytest.fixture
def case_gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test's id (same inputs every run)."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def tvm_cpu_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh CPU kernel cache for one test module (built kernels land in a temporary folder)."""
    from binattn.tvm_kernels.cache import KernelCache
    from binattn.tvm_kernels.cpu import build as cpu_build

    cache = KernelCache(tmp_path_factory.mktemp("kernels"))
    cpu_build.use_cache(cache)
    yield cache
    cpu_build.use_cache(None)
