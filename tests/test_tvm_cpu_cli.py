"""``binattn bench --device cpu``: runs the TVM kernels side by side with SDPA, writes JSON."""
import json
import subprocess
import sys

import pytest

import tvm  # noqa: F401  (a test dependency: a missing install must fail, not skip)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "binattn.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_bench_cpu_prints_ratios_and_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    out = run_cli("bench", "--device", "cpu", "--shape", "1,2,64,32", "--repeat", "1",
                  "--json", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "speed-up vs SDPA fp32" in out.stdout and "tvm-llvm fused" in out.stdout
    rows = json.loads(path.read_text())
    attention = next(r for r in rows if r["kind"] == "attention")
    assert set(attention["timings_ms"]) == {"binattn fp32-PV", "binattn 8-bit-PV", "SDPA fp32",
                                            "reference op"}
    assert attention["max_abs_err"]["binattn fp32-PV"] < 1e-4
    scores = next(r for r in rows if r["kind"] == "scores")
    assert scores["max_abs_err"]["binattn popcount"] == 0.0  # exact


@pytest.mark.parametrize("args,message", [
    (["--shape", "1,2,x,4"], "--shape must be four positive integers"),
    (["--json", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_bench_bad_input(args, message):
    out = run_cli("bench", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
