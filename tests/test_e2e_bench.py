"""The end-to-end table's code (``binattn/bench``) on CPU: the small rows of BERT and DiT (one
layer each) through the same functions ``benchmarks/e2e.py`` and ``binattn bench --model`` run.

Checked: every asked path gives a row with a positive time and no error, binary attention ran
on the binary paths (binattn ops in the profile), the attention share, attention speedup,
Amdahl bound and fraction of it are computed, a failing path is a row with its error while the
run goes on, and the markdown table renders both kinds of row. Few paths and a tiny timing
budget (one profiled call) keep it to about a minute on two busy cores.
"""
from __future__ import annotations

import os

import pytest
import torch

from binattn.bench import e2e

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CPU = torch.device("cpu")
PATHS = ("original eager", "original compiled", "binarized eager", "drop-in eager")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    return e2e.run(["bert", "dit_xl"], CPU, "small", budget_ms=1, only=PATHS,
                   on_row=lambda row: None, calls=1, log=lambda line: None)["rows"]


@pytest.mark.parametrize("model", ["bert", "dit_xl"])
def test_small_cpu_rows_have_every_path_timed(rows, model):
    mine = {r["path"]: r for r in rows if r["model"] == model}
    assert tuple(mine) == PATHS
    for path, row in mine.items():
        assert "error" not in row, f"{model} {path}: {row.get('error')}"
        assert row["ms"] > 0 and row["layers"] == "1" and row["size"] == "small"
        assert row["attention_ms"] > 0, f"{model} {path}: no attention op in the profile"
    for path in ("binarized eager", "drop-in eager"):
        row = mine[path]
        assert row["binattn_ms"] > 0, f"{model} {path}: binary attention did not run"
        assert 0 < row["attention_share"] <= 1.5
        assert row["attention_speedup"] > 0 and row["amdahl_bound"] > 0
        assert row["of_bound"] == pytest.approx(row["vs_compiled"] / row["amdahl_bound"])
    base = mine["original compiled"]
    assert base["vs_compiled"] == 1.0 and base["binattn_ms"] == 0
    assert 0 < base["attention_share_default"] <= 1


def test_table_renders_rows(rows):
    text = e2e.table(rows, "test CPU")
    assert text.startswith("device: test CPU")
    assert text.count("| bert |") == len(PATHS) and text.count("| dit_xl |") == len(PATHS)


def test_a_failing_path_is_a_row_and_the_run_goes_on(monkeypatch):
    pytest.importorskip("transformers")

    def broken(built, cache):
        raise RuntimeError("no such path\nsecond line")

    monkeypatch.setitem(e2e.PATHS, "broken", broken)
    seen = []
    rows = e2e.run_model("bert", CPU, "small", 1, only=("broken", "original eager"),
                         on_row=seen.append, calls=1, log=lambda line: None)
    assert sorted(r["path"] for r in seen) == ["broken", "original eager"]
    assert [r["path"] for r in rows] == ["original eager", "broken"]
    assert rows[1]["error"] == "RuntimeError: no such path" and "broken" in rows[1]["traceback"]
    assert rows[0]["ms"] > 0 and rows[0]["vs_compiled"] is None   # no baseline: no ratio
    assert "failed: RuntimeError: no such path" in e2e.table(rows, "cpu")


def test_amdahl_bound():
    assert e2e.amdahl(0.5, 2.0) == pytest.approx(1 / 0.75)
    assert e2e.amdahl(0.0, 10.0) == 1.0
    assert e2e.amdahl(1.0, 4.0) == pytest.approx(4.0)


def test_cli_model_names_the_known_models():
    from click.testing import CliRunner

    from binattn.cli.bench_cmd import command
    from binattn.errors import UserError

    result = CliRunner().invoke(command, ["--model", "nope", "--device", "cpu"])
    assert isinstance(result.exception, UserError)
    assert "unknown 'nope'" in str(result.exception) and "dit_xl" in str(result.exception)
