"""``binattn tune``: a tiny-budget search writes a database that the next build reads; the RPC
tracker path runs against a real tracker + server started here on loopback; CLI errors."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import tvm  # the TVM compiler is a test dependency: a missing install must fail, not skip

from binattn import ops  # noqa: E402
from binattn.ops import dispatch  # noqa: E402
from binattn.schedules.cpu import knobs as cpu_knobs  # noqa: E402
from binattn.tvm_kernels.cpu import tune  # noqa: E402
from binattn.schedules.database import TuningDatabase, use_db  # noqa: E402
from binattn.tvm_kernels.cpu import build as cpu_build, kernels as cpu_kernels  # noqa: E402
from binattn.tvm_kernels.cache import KernelCache  # noqa: E402
from binattn.tvm_kernels.cpu.target import target_key  # noqa: E402

SHAPE = tune.AttentionShape(batch=1, heads=2, n=128, head_dim=32)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_build, "_cache_override", KernelCache(tmp_path / "kernels"))
    yield
    use_db(None)


def test_tiny_tune_writes_db_that_the_next_build_reads(tmp_path, fresh_cache):
    db = TuningDatabase(tmp_path / "db")
    tag, results, best = tune.tune_attention(SHAPE, trials=2, db=db)
    assert len(results) == 2 and all(r.error is None and r.ms > 0 for r in results)
    record = json.loads((tmp_path / "db" / "records.json").read_text())[target_key()][tag]
    assert record["knobs"] == best.knobs and record["method"] == "knobs"

    use_db(tmp_path / "db")
    wl = cpu_kernels.AttentionWorkload(1, 32)
    assert cpu_build.attention_knobs(wl) == cpu_knobs.AttentionKnobs(**best.knobs)
    q, k, v = (torch.randn(1, 2, 50, 32) for _ in range(3))
    out = ops.binary_attention(q, k, v)
    built = [e for e in cpu_build.kernel_cache().entries() if e["kernel"] == "attention"]
    assert [e["schedule"] for e in built] == [cpu_knobs.AttentionKnobs(**best.knobs).key()]
    with dispatch.reference_only():
        torch.testing.assert_close(out, ops.binary_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_meta_schedule_tunes_scores_and_the_next_build_applies_its_trace(tmp_path, fresh_cache):
    """TVM meta_schedule with a 1-trial budget; the op then runs the tuned schedule, exactly."""
    db = TuningDatabase(tmp_path / "db")
    tag, best_ms = tune.tune_scores_meta_schedule(1024, 1024, 64, trials=1, db=db)
    assert best_ms is not None and best_ms > 0
    record = db.lookup(target_key(), tag)
    assert record["method"] == "meta_schedule" and (db.root / record["ms_workdir"]).is_dir()
    use_db(db.root)
    gen = torch.Generator().manual_seed(0)
    q_bits, _ = ops.sign_pack(torch.randn(1, 1024, 64, generator=gen))
    k_bits, _ = ops.sign_pack(torch.randn(1, 1024, 64, generator=gen))
    scores = ops.popcount_scores(q_bits, k_bits, 64)
    with dispatch.reference_only():
        assert torch.equal(scores, ops.popcount_scores(q_bits, k_bits, 64))
    schedules = [e["schedule"] for e in cpu_build.kernel_cache().entries()
                 if e["kernel"] == "scores"]
    assert schedules == [f"ms:{record['ms_workdir']}"]


def test_slower_result_does_not_replace_a_faster_record(tmp_path):
    db = TuningDatabase(tmp_path)
    assert db.store("t", "w", {"knobs": {"a": 1}, "ms": 1.0})
    assert not db.store("t", "w", {"knobs": {"a": 2}, "ms": 2.0})
    assert db.lookup("t", "w")["knobs"] == {"a": 1}


def test_failing_candidates_are_recorded_not_raised():
    results = tune.search_knobs([cpu_knobs.ScoreKnobs(3, 16)], lambda kn: 1 / 0, lambda kn: None,
                                tune.Measurer())
    assert results[0].error.startswith("ZeroDivisionError") and results[0].ms == float("inf")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rpc_tracker():
    """A real TVM RPC tracker and one server registered under key 'binattn-test'."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    server = rpc.Server("127.0.0.1", port=_free_port(), port_end=65000, key="binattn-test",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        yield f"127.0.0.1:{tracker.port}"
    finally:
        server.terminate()
        tracker.terminate()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "binattn.cli", *args], capture_output=True,
                          text=True, timeout=600, env=env)


def test_cli_tunes_through_rpc_tracker_on_loopback(tmp_path, rpc_tracker):
    out = run_cli("tune", "--kernel", "scores", "--trials", "2", "--shape", "1,1,96,40",
                  "--db", str(tmp_path), "--rpc-tracker", rpc_tracker,
                  "--rpc-key", "binattn-test")
    assert out.returncode == 0, out.stderr[-2000:]
    records = json.loads((tmp_path / "records.json").read_text())[target_key()]
    assert records["scores_w2_any"]["method"] == "knobs" and records["scores_w2_any"]["ms"] > 0
    assert "scores_w2_any" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["--shape", "1,2,3"], "--shape must be four positive integers"),
    (["--rpc-key", "x"], "--rpc-key needs --rpc-tracker"),
    (["--rpc-tracker", "nohostport", "--rpc-key", "k"], "--rpc-tracker must be host:port"),
])
def test_cli_bad_input_is_one_line_error(args, message, tmp_path):
    out = run_cli("tune", "--db", str(tmp_path), "--trials", "1", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_cli_help_names_the_options():
    out = run_cli("tune", "--help")
    assert out.returncode == 0
    for option in ("--trials", "--db", "--rpc-tracker", "--rpc-key", "--method", "--target"):
        assert option in out.stdout


@pytest.mark.parametrize("value_dim, rows", [(16, 4), (64, 4), (72, 4), (96, 4), (128, 2),
                                              (200, 1), (256, 1)])
def test_default_attention_knobs_keep_the_register_tile_in_registers(value_dim, rows):
    from binattn.schedules.cpu.knobs import TILE_REGISTERS, default_attention

    knobs = default_attention(value_dim)
    knobs.check()
    assert knobs.rows == rows
    assert rows == 1 or knobs.rows * -(-value_dim // 16) <= TILE_REGISTERS


def test_records_file_is_restated_at_most_once_a_second_but_own_writes_show_at_once(
        tmp_path, monkeypatch):
    """Kernel calls consult the database on every call: the records file's mtime is trusted for
    ``RESTAT_SECONDS``, except that a write by this process (through any database object for
    the directory) is seen by the next lookup."""
    from binattn.schedules import database

    reader, writer = TuningDatabase(tmp_path), TuningDatabase(tmp_path)
    assert reader.lookup("t", "w") is None
    writer.store("t", "w", {"ms": 2.0, "knobs": {}})
    assert reader.lookup("t", "w")["ms"] == 2.0          # this process wrote it: seen at once
    stats = []
    real_stat = type(reader.records_path).stat
    monkeypatch.setattr(type(reader.records_path), "stat",
                        lambda self, **kw: stats.append(self) or real_stat(self, **kw))
    for _ in range(50):
        reader.version()
    assert len(stats) <= 1, "stat'ed on every lookup"
    # another process rewrites the file: seen once the second has passed
    records = tmp_path / "records.json"
    before = records.stat().st_mtime_ns
    records.write_text(json.dumps({"t": {"w": {"ms": 1.0, "knobs": {}}}}))
    os.utime(records, ns=(before + 10**9, before + 10**9))   # a coarse clock cannot hide it
    monkeypatch.setattr(database.time, "monotonic", lambda: 1e12)
    assert reader.lookup("t", "w")["ms"] == 1.0
