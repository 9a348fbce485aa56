"""CPU-runnable tests of binattn's CUDA build path (no GPU needed; nvcc 13 is on these machines).

Real builds: TVM generates the kernels, nvcc compiles them, apache-tvm-ffi loads the .so here
and lists the kernels; manifests, arch matching, the packaged libraries, the fallback reason
when no kernel matches, the tuning database, the ``build-kernels`` CLI, and that
``import binattn`` (with the CUDA dispatch module) works where the TVM compiler is absent.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from binattn.schedules.cuda import attention as sched
from binattn.tvm_kernels.cuda import build as cuda_build, dispatch as cuda_dispatch

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
PACKAGED = Path(cuda_dispatch.__file__).resolve().parents[2] / "kernels"


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """One real ``binattn build-kernels`` run (TVM + nvcc), shared by the tests below."""
    from binattn.cli import main

    out = tmp_path_factory.mktemp("kernels") / "out"
    result = CliRunner().invoke(main, ["build-kernels", "--arch", "sm_90a", "--dtype", "bfloat16",
                                       "--dv", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "sm_90a:" in result.output and "manifest:" in result.output
    return out


@needs_nvcc
def test_build_writes_loadable_library_and_manifest(small_build):
    import tvm_ffi

    manifest = cuda_build.read_manifest(small_build)
    entry = manifest["libraries"]["sm_90a"]
    lib = small_build / entry["file"]
    assert entry["attention"] == {"bfloat16": [64]}
    assert entry["attention_short"] == {"bfloat16": [64]}
    assert entry["short_max_keys"] == sched.SHORT_MAX_KEYS
    assert entry["sign_pack_qk"] == ["float16", "bfloat16"]
    assert entry["attention_pv8"] == {"bfloat16": [64]}
    assert entry["schedules"]["bfloat16/dv64/short"]["key_block"] == 32
    # the bias-table kernels hold at least TABLE_MIN_ROWS rows of one head's column
    assert set(entry["table_rows"]) == {"bfloat16/dv64", "bfloat16/dv64/short", "pv8/bfloat16/dv64"}
    assert all(rows >= 2048 for rows in entry["table_rows"].values())
    assert entry["sha256"] == hashlib.sha256(lib.read_bytes()).hexdigest()
    source = (small_build / "binattn_cuda_sm_90a.cu").read_text()
    assert "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc" in source
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in source
    module = tvm_ffi.load_module(str(lib))
    for name in ("binattn_attention_bfloat16_dv64", "binattn_attention_bfloat16_dv64_bias",
                 "binattn_attention_bfloat16_dv64_short",
                 "binattn_attention_bfloat16_dv64_bias_short",
                 "binattn_attention_bfloat16_dv64_table",
                 "binattn_attention_bfloat16_dv64_table_short",
                 "binattn_sign_pack_float32", "binattn_sign_pack_bfloat16_v8",
                 "binattn_sign_pack_float16_v8_l2", "binattn_sign_pack_bfloat16_v8_l4",
                 "binattn_sign_pack_qk_bfloat16_l2", "binattn_sign_pack_qk_float16_l8",
                 "binattn_attention_pv8_bfloat16_dv64", "binattn_attention_pv8_bfloat16_dv64_bias",
                 "binattn_attention_pv8_bfloat16_dv64_table",
                 "binattn_v8_amax_bfloat16", "binattn_v8_pack_bfloat16",
                 "binattn_popcount_scores"):
        assert module[name] is not None
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", str(lib)], capture_output=True,
                                 text=True).stdout
        assert "sm_90a" in listing


@needs_nvcc
def test_rebuild_keeps_other_archs(small_build, tmp_path):
    for f in small_build.iterdir():
        shutil.copy(f, tmp_path / f.name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["libraries"]["sm_80"] = dict(manifest["libraries"]["sm_90a"], file="gone.so")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # an entry whose file is missing is dropped; the real one is kept
    assert set(cuda_build.read_manifest(tmp_path)["libraries"]) == {"sm_90a", "sm_80"}


def test_packaged_libraries_match_manifest():
    manifest = cuda_build.read_manifest(PACKAGED)
    assert manifest is not None, "binattn/kernels/manifest.json missing"
    assert {"sm_90a", "sm_80"} <= set(manifest["libraries"])
    for arch, entry in manifest["libraries"].items():
        lib = PACKAGED / entry["file"]
        assert lib.stat().st_size < 12 << 20, f"{lib} too big for package data"
        assert hashlib.sha256(lib.read_bytes()).hexdigest() == entry["sha256"], arch
        assert sorted(entry["attention"]["bfloat16"]) == sorted(sched.DV_BUCKETS)


def test_packaged_libraries_were_built_from_these_sources():
    """Kernel code changed without a rebuild would ship libraries that do something else: the
    manifest records the hash of the sources each library was generated from."""
    manifest = json.loads((PACKAGED / "manifest.json").read_text())
    now = cuda_build.kernel_sources_hash()
    for arch, entry in manifest["libraries"].items():
        assert entry.get("sources_sha256") == now, (
            f"{arch}: the kernel sources changed since binattn/kernels was built; run "
            f"`binattn build-kernels --arch sm_90a,sm_80 -o binattn/kernels --no-keep-source`")


def test_sources_hash_ignores_docstrings_but_not_code(tmp_path, monkeypatch):
    root = tmp_path / "binattn"
    for rel in cuda_build.KERNEL_SOURCES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text((PACKAGED.parent / rel).read_text())
    monkeypatch.setattr(cuda_build, "__file__", str(root / "tvm_kernels" / "cuda" / "build.py"))
    base = cuda_build.kernel_sources_hash()
    assert base == cuda_build.kernel_sources_hash()
    kernel = root / "tvm_kernels" / "cuda" / "popcount.py"
    text = kernel.read_text()
    kernel.write_text(text.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")
    assert cuda_build.kernel_sources_hash() == base
    kernel.write_text(text + "\nEXTRA = 1\n")
    assert cuda_build.kernel_sources_hash() != base


def test_packaged_library_loads_without_gpu():
    import tvm_ffi

    entry = cuda_build.read_manifest(PACKAGED)["libraries"]["sm_90a"]
    module = tvm_ffi.load_module(str(PACKAGED / entry["file"]))
    assert module["binattn_attention_float16_dv128"] is not None


@pytest.mark.parametrize("capability, first", [((9, 0), "sm_90a"), ((8, 6), "sm_86"),
                                               ((8, 0), "sm_80"), ((12, 0), "sm_120a")])
def test_arch_candidates(capability, first):
    cands = cuda_dispatch.arch_candidates(capability)
    assert cands[0] == first
    assert "sm_80" in cands


def test_no_matching_library_names_reason(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": cuda_build.MANIFEST_FORMAT, "libraries": {"sm_90a": {"file": "x.so"}}}))
    (tmp_path / "x.so").write_bytes(b"")
    monkeypatch.setenv("BINATTN_CUDA_KERNELS", str(tmp_path))
    monkeypatch.setattr(cuda_dispatch, "kernel_dirs", lambda: [tmp_path])
    directory, entry, reason = cuda_dispatch.find_library((7, 5))
    assert directory is None and "sm_75" in reason and "sm_90a" in reason
    assert cuda_dispatch.find_library((9, 0))[2] == "sm_90a"


def test_library_of_an_older_format_is_not_loaded(tmp_path, monkeypatch):
    # format 1 kernels take one argument fewer: calling them would read garbage
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": 1, "libraries": {"sm_90a": {"file": "x.so"}}}))
    (tmp_path / "x.so").write_bytes(b"")
    monkeypatch.setattr(cuda_dispatch, "kernel_dirs", lambda: [tmp_path])
    assert cuda_dispatch.find_library((9, 0))[0] is None


def test_pv8_key_permutation():
    """The key order of the 8-bit kernel's V operand is a permutation of whole blocks that
    matches the u8 fragment's byte order."""
    from binattn.schedules.cuda.attention import PV8_KEY_BLOCK, pv8_key_permutation

    for n in (1, 31, 32, 77):
        perm = pv8_key_permutation(n).tolist()
        assert sorted(perm) == list(range(len(perm))) and len(perm) % PV8_KEY_BLOCK == 0
    # byte k = 4t + 2a + b of a 16-key group holds key 8a + 2t + b (the thread's score tiles)
    assert pv8_key_permutation(32)[:8].tolist() == [0, 1, 8, 9, 2, 3, 10, 11]
    assert pv8_key_permutation(32)[16:20].tolist() == [16, 17, 24, 25]


def test_dispatch_names_the_built_sign_pack_kernels():
    from binattn.tvm_kernels.cuda.sign_pack import VEC_LANES, sign_pack_name, sign_pack_qk_name

    for head_dim, lanes in ((8, 2), (64, 2), (72, 4), (128, 4), (136, 8), (256, 8)):
        assert lanes in VEC_LANES
        assert (cuda_dispatch.vec_sign_pack_name("float16", head_dim)
                == sign_pack_name("float16", True, lanes))
        assert (cuda_dispatch.qk_sign_pack_name("bfloat16", head_dim)
                == sign_pack_qk_name("bfloat16", lanes))


def test_dispatch_names_the_built_8bit_kernels():
    from binattn.tvm_kernels.cuda.attention_pv8 import attention_pv8_name
    from binattn.tvm_kernels.cuda.quantize_v import v8_amax_name, v8_pack_name

    for dtype, dv, has_bias, table in (("float16", 64, False, False),
                                       ("bfloat16", 256, True, False),
                                       ("bfloat16", 64, True, True)):
        assert (cuda_dispatch.pv8_symbol(dtype, dv, has_bias, table)
                == attention_pv8_name(dtype, dv, has_bias, table))
    assert v8_amax_name("bfloat16") == "binattn_v8_amax_bfloat16"  # as quantize_v8 calls them
    assert v8_pack_name("float16") == "binattn_v8_pack_float16"


@pytest.mark.parametrize("knobs, present, absent", [
    ({"wgmma_pv": 1, "stages": 3}, ("wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16",
                       "wgmma.wait_group.sync.aligned", "encode_matrix_descriptor"), ("ldmatrix",)),
    ({"row_tiles": 2, "stages": 3},
     ("ldmatrix.sync.aligned.m8n8.x4.trans", "cp.async.wait_group 1"),
     ("wgmma.mma_async", "<< 23")),
    # the FMA-polynomial exp2 builds 2**n by adding n << 23 to the float bits
    ({"poly_quarters": 2}, ("ex2.approx.ftz.f32", "<< 23"),
     ("wgmma.mma_async", "__launch_bounds__(128, ")),
    # exp_table: the no-shift softmax reads its exps from a shared table of the 2D+1 scores
    ({"row_tiles": 2, "exp_table": 1}, ("__shared__ alignas(64) float etab_ptr[514]",), ("<< 23",)),
    ({"row_tiles": 2}, ("ex2.approx.ftz.f32",), ("etab_ptr",)),
    # min_blocks promises ptxas that many CTAs per SM (it caps the registers)
    ({"row_tiles": 2, "min_blocks": 3}, ("__launch_bounds__(128, 3)",),
     ("__launch_bounds__(128)",)),
])
def test_schedule_knobs_shape_the_generated_cuda(knobs, present, absent):
    # TVM code generation only (no nvcc): each knob leaves its mark in the CUDA source
    import tvm

    from binattn.tvm_kernels.cuda.attention import attention_func

    func = attention_func("bfloat16", 64, sched.CudaAttentionSchedule(**{"warps": 4, **knobs}))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host={"kind": "cuda_host"})
    source = tvm.backend.cuda.export_cuda_host(tvm.compile(tvm.IRModule({"f": func}), target).mod)
    for text in present:
        assert text in source, text
    for text in absent:
        assert text not in source, text


def test_parse_archs_rejects_unknown():
    assert cuda_build.parse_archs("sm_90a, sm_80") == ["sm_90a", "sm_80"]
    with pytest.raises(ValueError, match="sm_99"):
        cuda_build.parse_archs("sm_99")


def test_short_schedule_defaults_to_32_key_blocks(tmp_path):
    db = tmp_path / "tuned.json"
    regular = sched.CudaAttentionSchedule(8, 64, 0, 3, 1, 1)  # wgmma: not with 32-key blocks here
    sched.record_schedule("sm_90a", "bfloat16", 64, regular, db=db)
    short = sched.schedule_for("sm_90a", "bfloat16", 64, db=db, short=True)
    assert (short.key_block, short.wgmma_pv, short.warps) == (32, 0, 8)
    own = sched.CudaAttentionSchedule(4, 64, 0, 2, 2)
    sched.record_schedule("sm_90a", "bfloat16", 64, own, db=db, short=True)
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db, short=True) == own
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db) == regular


def test_tuning_db_roundtrip(tmp_path):
    db = tmp_path / "tuned.json"
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db) == sched.default_schedule(64)
    best = sched.CudaAttentionSchedule(warps=8, key_block=32)
    sched.record_schedule("sm_90a", "bfloat16", 64, best, db=db)
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db) == best
    with pytest.raises(ValueError, match="warps"):
        sched.record_schedule("sm_90a", "bfloat16", 64, sched.CudaAttentionSchedule(3, 64), db=db)


def test_tune_grid_and_record_best(tmp_path):
    from binattn.tvm_kernels.cuda import tune as cuda_tune

    from binattn.tvm_kernels.cuda.attention import SHARED_LIMIT, attention_func, shared_bytes

    grid = cuda_tune.candidates(64)
    assert sched.CudaAttentionSchedule(4, 64) in grid and len(grid) == 18
    assert {c.warps for c in grid if c.exp_table} == {4, 8}
    assert {c.min_blocks for c in grid if c.row_tiles == 2 and c.warps == 4} == {0, 3}
    assert not any(c.min_blocks for c in cuda_tune.candidates(128))
    assert {c.stages for c in grid} == {2, 3, 4} and {c.row_tiles for c in grid} == {1, 2}
    assert all(c.stages >= 3 for c in grid if c.wgmma_pv)
    assert any(c.wgmma_pv for c in grid)
    assert not any(c.wgmma_pv for c in cuda_tune.candidates(64, "sm_80"))
    assert all(shared_bytes(64, c) <= SHARED_LIMIT for c in grid)
    big = cuda_tune.candidates(256)
    assert big and all(c.key_block == 32 and shared_bytes(256, c) <= SHARED_LIMIT for c in big)
    with pytest.raises(ValueError, match="shared memory"):
        attention_func("bfloat16", 256, sched.CudaAttentionSchedule(4, 128))
    with pytest.raises(ValueError, match="exp_table"):
        sched.CudaAttentionSchedule(4, 64, poly_quarters=1, exp_table=1).check()
    with pytest.raises(ValueError, match="min_blocks"):
        sched.CudaAttentionSchedule(4, 64, min_blocks=7).check()
    with pytest.raises(ValueError, match="poly_quarters"):
        sched.CudaAttentionSchedule(4, 64, 5).check()
    with pytest.raises(ValueError, match="row_tiles"):
        sched.CudaAttentionSchedule(4, 64, 0, 2, 3).check()
    with pytest.raises(ValueError, match="warpgroups"):
        sched.CudaAttentionSchedule(4, 64, 0, 2, 2, 1).check()
    with pytest.raises(ValueError, match="dv"):
        attention_func("bfloat16", 256, sched.CudaAttentionSchedule(4, 32, 0, 3, 1, 1))
    with pytest.raises(ValueError, match="stages"):
        attention_func("bfloat16", 64, sched.CudaAttentionSchedule(4, 64, 0, 2, 1, 1))
    timings = tmp_path / "timings.json"
    rows = [dict(arch="sm_90a", dtype="bfloat16", dv=64, ms=ms, correct=ok,
                 schedule={"warps": w, "key_block": k})
            for w, k, ms, ok in ((4, 64, 1.0, True), (8, 128, 0.5, False), (4, 128, 0.7, True))]
    # a study at another shape (build_candidates(shape=...)) is never recorded
    rows.append(dict(arch="sm_90a", dtype="bfloat16", dv=64, ms=0.1, correct=True,
                     schedule={"warps": 8, "key_block": 32}, shape=[64, 12, 197]))
    timings.write_text(json.dumps({"results": rows}))
    db = tmp_path / "db.json"
    best = cuda_tune.record_best(timings, db=db)
    assert best["sm_90a/bfloat16/dv64"]["ms"] == 0.7  # the faster wrong one is not taken
    assert (sched.schedule_for("sm_90a", "bfloat16", 64, db=db)
            == sched.CudaAttentionSchedule(4, 128))


@needs_nvcc
def test_tune_cuda_cli_builds_candidates_and_says_how_to_time_them(tmp_path, monkeypatch):
    """`binattn tune --target cuda` end to end on a machine without a GPU: real TVM + nvcc builds
    of the regular and short-sequence candidate libraries (the grid cut to two schedules each to
    keep nvcc short), candidates.json describing them, and the GPU step printed."""
    import tvm_ffi

    from binattn.cli import main
    from binattn.tvm_kernels.cuda import tune as cuda_tune

    if torch.cuda.is_available():
        pytest.skip("with a GPU the command times the candidates itself")
    full = cuda_tune.candidates
    monkeypatch.setattr(cuda_tune, "candidates",
                        lambda dv, arch="sm_90a", short=False: full(dv, arch, short)[:2])
    result = CliRunner().invoke(main, ["tune", "--target", "cuda", "--shape", "2,4,64,60",
                                       "--db", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cuda.tune time cuda_candidates" in result.output and "record" in result.output
    out = tmp_path / "cuda_candidates"
    entries = json.loads((out / "candidates.json").read_text())
    assert len(entries) == 4 and {e["dv"] for e in entries} == {64}  # D=60 runs the dv 64 kernel
    assert sorted(bool(e.get("short")) for e in entries) == [False, False, True, True]
    assert {tuple(e["shape"]) for e in entries if e.get("short")} == {cuda_tune.SHORT_TUNE_SHAPE}
    for entry in entries:
        module = tvm_ffi.load_module(str(out / entry["file"]))
        assert module[entry["symbol"]] is not None
        assert module["binattn_sign_pack_bfloat16"] is not None
    bad = CliRunner().invoke(main, ["tune", "--target", "cuda", "--shape", "2,4,64,300",
                                    "--db", str(tmp_path)])
    assert bad.exit_code != 0 and "256" in bad.output


def test_short_kernel_tuning_records_under_its_own_key(tmp_path):
    from binattn.tvm_kernels.cuda import tune as cuda_tune

    grid = cuda_tune.candidates(64, short=True)
    assert {c.key_block for c in grid} == {32, 64} and not any(c.wgmma_pv for c in grid)
    rows = [dict(arch="sm_90a", dtype="bfloat16", dv=64, ms=0.3, correct=True, short=True,
                 shape=list(cuda_tune.SHORT_TUNE_SHAPE), schedule={"warps": 4, "key_block": 32}),
            dict(arch="sm_90a", dtype="bfloat16", dv=64, ms=0.9, correct=True,
                 shape=list(cuda_tune.TUNE_SHAPE), schedule={"warps": 8, "key_block": 64})]
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps({"results": rows}))
    db = tmp_path / "db.json"
    assert set(cuda_tune.record_best(timings, db=db)) == {"sm_90a/bfloat16/dv64/short",
                                                           "sm_90a/bfloat16/dv64"}
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db, short=True).key_block == 32
    assert sched.schedule_for("sm_90a", "bfloat16", 64, db=db).warps == 8


def test_build_kernels_cli_errors_and_help(tmp_path):
    from binattn.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["build-kernels", "--help"])
    assert result.exit_code == 0 and "--arch" in result.output
    result = runner.invoke(main, ["build-kernels", "--arch", "sm_99", "-o", str(tmp_path / "k")])
    assert result.exit_code == 2 and "sm_99" in result.output
    assert not (tmp_path / "k").exists()


BLOCK_TVM = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tvm" or name.startswith("tvm."):
            raise ImportError("TVM compiler blocked for this test")
sys.meta_path.insert(0, Block())
import binattn, torch
from binattn.tvm_kernels.cuda import dispatch as cuda_dispatch
from binattn.ops import dispatch
assert ("binary_attention", "cuda") in dispatch._registry
assert "tvm" not in sys.modules
print("ok")
"""


def test_import_without_tvm_compiler():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TVM], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("arch", ("sm_90a", "sm_80"))
def test_every_table_kernel_fits_a_large_relpos_table(arch):
    """The bias-table kernel of every shipped (dtype, dv, regular/short) schedule keeps at least
    TABLE_MIN_ROWS table rows in shared memory (fewer pipeline stages where needed) and stays
    within the static shared-memory limit; a schedule with no room left is refused by name."""
    from binattn.tvm_kernels.cuda.attention import (SHARED_LIMIT, TABLE_MIN_ROWS, attention_func,
                                                    shared_bytes, table_rows, table_schedule)

    for dtype in sched.DTYPES:
        for dv in sched.DV_BUCKETS:
            for short in (False, True):
                base = sched.schedule_for(arch, dtype, dv, short=short)
                chosen = table_schedule(dv, base)
                rows = table_rows(dv, chosen)
                assert rows >= TABLE_MIN_ROWS and rows % 256 == 0, (dtype, dv, short, chosen)
                assert shared_bytes(dv, chosen, rows) <= SHARED_LIMIT
                assert chosen == base or (chosen.stages == 2 and base.stages > 2)
    crowded = sched.CudaAttentionSchedule(4, 64, 0, 3, 2)  # dv 96, 3 stages: 47.6 KB already
    assert table_rows(96, crowded) < TABLE_MIN_ROWS and table_schedule(96, crowded).stages == 2
    with pytest.raises(ValueError, match="bias table"):
        attention_func("bfloat16", 96, crowded, table=True)


def test_table_inputs_give_the_kernel_rows_it_can_count():
    """The flat table, index and strides the table kernel reads (pure torch, no GPU): the
    kernel counts rows as (span − 1 − (Hq − 1)·sh) // sb + 1, which must be T for every
    layout."""
    table = torch.randn(9, 4)
    index = torch.randint(0, 9, (5, 6))
    layouts = {"contiguous": table, "transposed": table.t().contiguous().t(),
               "one column": table[:, :1], "broadcast rows": table[:1].expand(9, 4)}
    for name, t in layouts.items():
        flat, idx, (sb, sh, sq, sk) = cuda_dispatch._table_inputs(t, index)
        rows = (flat.numel() - 1 - ((4 - 1) * sh if sh else 0)) // max(sb, 1) + 1
        assert rows == 9, name
        got = torch.stack([flat[r * sb + h * sh] for r in range(9) for h in range(t.shape[1])])
        torch.testing.assert_close(got.view(9, -1), t.float(), msg=name)
        assert idx.dtype == torch.int32 and (sq, sk) == (6, 1)
        assert torch.equal(idx.view(5, 6), index.int())
