"""benchmarks/train_multigpu.py's CPU path (gloo, tiny model, 1 and 2 ranks): the plumbing the
multi-GPU run uses — torchrun launches, DDP and FSDP, timing, the table, the bias-table check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_multigpu_benchmark_cpu_path(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", BINATTN_KERNELS="reference")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_multigpu.py"),
                           "--cpu", "--steps", "4", "--warmup-steps", "1", "--batch", "4",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "multigpu.json").read_text())
    assert [(r["gpus"], r["mode"]) for r in rows] == [(1, "single"), (2, "ddp"), (2, "fsdp")]
    assert all(r["tables_identical"] and r["samples_per_s"] > 0 for r in rows)
    assert abs(rows[1]["final_loss"] - rows[2]["final_loss"]) < 1e-4   # DDP = FSDP
    assert "| 2 | fsdp |" in (tmp_path / "multigpu.md").read_text()
    assert "NCCL_NVLS_ENABLE=0 python -m torch.distributed.run" in proc.stdout
