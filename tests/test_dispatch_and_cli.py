"""Kernel dispatch (kernel chosen, fallback reason, one-time warning, forced reference) and CLI
skeleton."""
import subprocess
import sys
import warnings

import pytest
import torch

from binattn.ops import dispatch


def test_kernel_chosen_when_supported_else_reference_with_one_warning():
    calls = []
    dispatch.register_kernel("unit_op", "cpu", dispatch.Kernel(
        "unit-kernel", lambda x: calls.append("kernel") or x + 1,
        lambda x: None if x.dtype == torch.float32 else f"dtype {x.dtype} not built"))
    reference = lambda x: calls.append("reference") or x + 1  # noqa: E731
    assert dispatch.run("unit_op", "cpu", reference, torch.ones(1)).item() == 2
    assert dispatch.kernel_report()["unit_op/cpu"] == "unit-kernel"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            dispatch.run("unit_op", "cpu", reference, torch.ones(1, dtype=torch.float64))
    fallback = [w for w in caught if "unit_op" in str(w.message)]
    assert len(fallback) == 1 and "dtype torch.float64 not built" in str(fallback[0].message)
    assert dispatch.kernel_report()["unit_op/cpu"].startswith("reference (unit-kernel: dtype")
    with dispatch.reference_only():
        dispatch.run("unit_op", "cpu", reference, torch.ones(1))
    assert calls == ["kernel", "reference", "reference", "reference", "reference"]
    assert dispatch.kernel_report()["unit_op/cpu"] == "reference (forced)"


def test_unknown_device_type_falls_back_with_reason():
    with pytest.warns(RuntimeWarning, match="no kernel provider for device type 'xpu_test'"):
        assert dispatch.run("unit_op2", "xpu_test", lambda: 7) == 7


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "binattn.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_help_and_version():
    import binattn

    out = run_cli("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "1-bit" in out.stdout
    out = run_cli("--version")
    assert out.returncode == 0 and binattn.__version__ in out.stdout
    out = run_cli("no-such-verb")
    assert out.returncode == 2 and "No such command" in out.stderr


def test_import_does_not_import_tvm():
    code = "import sys, binattn; assert 'tvm' not in sys.modules and 'tvm_ffi' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
