"""Tune the CUDA attention kernel's schedule knobs: build candidates here, time them on a GPU.

What it does, in three steps that can run on two machines (TVM + nvcc here, a GPU there):

1. ``build_candidates(out_dir, arch, dvs)`` builds one library per value head size holding
   every candidate schedule (warps × key_block × stages × row tiles / wgmma, plus min_blocks and
   exp_table variants) under its own symbol, with TVM + nvcc (no GPU needed), plus
   ``candidates.json`` describing them (``shape=`` times them at another shape: a study);
2. ``python -m binattn.tvm_kernels.cuda.tune time DIR`` (on the GPU machine; needs torch and
   apache-tvm-ffi only) times every candidate with CUDA events at a long-sequence shape, checks
   its output against the default schedule, and writes ``DIR/timings.json``;
3. ``record_best(DIR)`` stores the fastest correct candidate per (arch, dtype, dv) in the tuning
   database (``binattn.schedules.cuda.attention``) that ``binattn build-kernels`` reads.

``binattn tune --target cuda`` drives steps 1 and 3 and prints the command for step 2.
What it does not: search beyond the grid below (the kernel template fixes everything else).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

from ...schedules.cuda.attention import SCORE_MAGIC, CudaAttentionSchedule, record_schedule

GRID_WARPS = (4, 8)
GRID_KEY_BLOCK = (32, 64, 128)
GRID_STAGES = (2, 3, 4)  # 4 only with wgmma (one stage stays with the running wgmma)
#: (row_tiles, wgmma_pv) pairs; poly_quarters stays 0 (the FMA-polynomial exp lost every time it
#: was in the grid on the H100: +10–25 %, docs/gpu.md)
GRID_PV = ((1, 0), (2, 0), (1, 1))
GRID_MIN_BLOCKS = 3
TUNE_DVS = (64, 128)
TUNE_SHAPE = (2, 16, 4096)  # B, H, N; D = dv
#: the short-sequence kernel (run up to SHORT_MAX_KEYS keys) is tuned at ViT-B/16's shape
SHORT_TUNE_SHAPE = (64, 12, 197)


def candidates(dv: int, arch: str = "sm_90a", short: bool = False) -> list[CudaAttentionSchedule]:
    """The schedules tried for one value head size: the grid, less what does not fit in shared
    memory, 32-key blocks only for heads over 64 (small blocks pay off only with big heads), two
    row tiles only with blocks of up to 64 keys (registers), wgmma only on sm_90a and with 3 or 4
    stages (one stays with the running wgmma). ``short``: the short-sequence kernel's grid,
    warps × 32- or 64-key blocks × 2–3 stages × 1–2 row tiles, mma.sync only."""
    from .attention import SHARED_LIMIT, shared_bytes

    if short:
        grid = itertools.product(GRID_WARPS, (32, 64), (2, 3), (1, 2))
        return [s for s in (CudaAttentionSchedule(w, k, 0, st, rt) for w, k, st, rt in grid)
                if shared_bytes(dv, s) <= SHARED_LIMIT and s.key_block <= 32 * s.warps]

    grid = itertools.product(GRID_WARPS, GRID_KEY_BLOCK, GRID_STAGES, GRID_PV)
    scheds = (CudaAttentionSchedule(w, k, 0, st, rt, wg) for w, k, st, (rt, wg) in grid)
    kept = [s for s in scheds
            if shared_bytes(dv, s) <= SHARED_LIMIT and not (dv <= 64 and s.key_block == 32)
            and not (s.row_tiles == 2 and s.key_block > 64)
            and not (s.wgmma_pv and (arch != "sm_90a" or dv + 8 > 256 or s.stages < 3))
            and not (s.stages == 4 and not s.wgmma_pv)]
    # plus two variants: promising ptxas 3 CTAs per SM (two row tiles of a short head hold ~210
    # registers, i.e. 2 CTAs of 4 warps: ≤ 168 registers, a few spills, more resident warps);
    # and the no-shift softmax's exps from a table of the 2D+1 scores instead of the MUFU
    return (kept + [replace(s, min_blocks=GRID_MIN_BLOCKS) for s in kept
                    if dv <= 64 and s.warps == 4 and s.row_tiles == 2]
            + [replace(s, exp_table=1) for s in kept
               if s.row_tiles == 2 and s.stages == 2 and not s.wgmma_pv
               and shared_bytes(dv, replace(s, exp_table=1)) <= SHARED_LIMIT])


def candidate_symbol(dtype: str, dv: int, schedule: CudaAttentionSchedule,
                     short: bool = False) -> str:
    """Exported name of one candidate kernel inside a candidate library."""
    return (f"cand_{dtype}_dv{dv}_w{schedule.warps}_k{schedule.key_block}"
            f"_p{schedule.poly_quarters}_s{schedule.stages}_r{schedule.row_tiles}"
            f"{'_wg' if schedule.wgmma_pv else ''}"
            f"{f'_mb{schedule.min_blocks}' if schedule.min_blocks else ''}"
            f"{'_etab' if schedule.exp_table else ''}{'_short' if short else ''}")


def _build_library(out_dir: Path, arch: str, name: str, funcs: dict) -> None:
    import subprocess

    import tvm

    from . import build as cuda_build

    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "cuda_host"})
    source = tvm.backend.cuda.export_cuda_host(tvm.compile(tvm.IRModule(funcs), target).mod)
    (out_dir / f"{name}.cu").write_text(source)
    cmd = cuda_build.nvcc_command(arch, out_dir / f"{name}.cu", out_dir / f"{name}.so")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {name}: {proc.stderr[-2000:]}")
    (out_dir / f"{name}.cu").unlink()


def build_candidates(out_dir: Path, arch: str = "sm_90a", dvs: Sequence[int] = TUNE_DVS,
                     dtype: str = "bfloat16", shape: Optional[Sequence[int]] = None,
                     short_dvs: Sequence[int] = ()) -> Path:
    """Build one library per value head size holding every candidate schedule (each under its
    own symbol) and the sign-pack kernel, into ``out_dir``; returns candidates.json. ``shape``
    (B, H, N) times them at another shape than ``TUNE_SHAPE`` (a study: ``record_best``
    records only tuning-shape timings). ``short_dvs``: also the short-sequence kernel's
    candidates for these value head sizes, timed at ``SHORT_TUNE_SHAPE``."""
    from concurrent.futures import ThreadPoolExecutor

    from .attention import attention_func
    from .sign_pack import sign_pack_func, sign_pack_name

    out_dir.mkdir(parents=True, exist_ok=True)
    entries, jobs = [], []
    for dv in dvs:
        name = f"cand_{arch}_{dtype}_dv{dv}"
        funcs = {sign_pack_name(dtype): sign_pack_func(dtype)}
        for sched in candidates(dv, arch):
            symbol = candidate_symbol(dtype, dv, sched)
            funcs[symbol] = attention_func(dtype, dv, sched).with_attr("global_symbol", symbol)
            entries.append({"file": f"{name}.so", "symbol": symbol, "arch": arch,
                            "dtype": dtype, "dv": dv, "schedule": asdict(sched),
                            "shape": list(shape or TUNE_SHAPE)})
        jobs.append((name, funcs))
    for dv in short_dvs:
        name = f"cand_{arch}_{dtype}_dv{dv}_short"
        funcs = {sign_pack_name(dtype): sign_pack_func(dtype)}  # the timing packs q and k with it
        for sched in candidates(dv, arch, short=True):
            symbol = candidate_symbol(dtype, dv, sched, short=True)
            funcs[symbol] = attention_func(dtype, dv, sched).with_attr("global_symbol", symbol)
            entries.append({"file": f"{name}.so", "symbol": symbol, "arch": arch, "short": True,
                            "dtype": dtype, "dv": dv, "schedule": asdict(sched),
                            "shape": list(SHORT_TUNE_SHAPE)})
        jobs.append((name, funcs))
    # nvcc runs outside the GIL: the libraries compile side by side
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        list(pool.map(lambda job: _build_library(out_dir, arch, *job), jobs))
    path = out_dir / "candidates.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def time_candidates(directory: Path, reps: int = 20) -> Path:
    """On a GPU: time every candidate (median of CUDA-event timings); writes timings.json."""
    import torch
    import tvm_ffi

    entries = json.loads((directory / "candidates.json").read_text())
    results, reference, modules = [], {}, {}
    for entry in entries:
        B, H, N = entry.get("shape") or TUNE_SHAPE
        dv, dtype = entry["dv"], getattr(torch, entry["dtype"])
        if entry["file"] not in modules:
            modules[entry["file"]] = tvm_ffi.load_module(str(directory / entry["file"]))
        module = modules[entry["file"]]
        gen = torch.Generator(device="cuda").manual_seed(dv)
        q, k, v = (torch.randn(B, H, N, dv, device="cuda", dtype=dtype, generator=gen)
                   for _ in range(3))
        packed = []
        for x, pop_form in ((q, (0, 1)), (k, (SCORE_MAGIC, -1))):
            bits = torch.empty(B * H, N, 8, dtype=torch.int32, device="cuda")
            pops = torch.empty(B * H, N, dtype=torch.int32, device="cuda")
            abs_sum = torch.zeros(B * H, dtype=torch.float32, device="cuda")
            module[f"binattn_sign_pack_{entry['dtype']}"](x.reshape(B * H, N, dv), bits, pops,
                                                          abs_sum, *pop_form)
            packed.append((bits.view(B, H, N, 8), pops.view(B, H, N), abs_sum))
        out = torch.full((B, H, N, dv), float("nan"), dtype=dtype, device="cuda")
        args = (packed[0][0], packed[1][0], packed[1][1],
                v.view(torch.int32).view(B, H, N, dv // 8, 4),
                out.view(torch.int32), packed[0][2], packed[1][2],
                torch.zeros(1, device="cuda"), torch.zeros(1, dtype=torch.int32, device="cuda"),
                0, 1, 0, 0, 0, 0,
                float(1.4426950408889634 / math.sqrt(dv) / (N * dv) ** 2), dv)
        fn = module[entry["symbol"]]
        fn(*args)
        torch.cuda.synchronize()
        ok = not torch.isnan(out).any().item()
        key = (entry["dtype"], dv, B, H, N)  # the first candidate of each is the reference
        if key in reference:
            ok = ok and (out.float() - reference[key]).abs().max().item() < 5e-2
        else:
            reference[key] = out.float().clone()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        results.append(dict(entry, ms=sorted(times)[len(times) // 2], correct=bool(ok),
                            shape=[B, H, N]))
        print(f"{entry['symbol']}: {results[-1]['ms'] * 1e3:.1f} µs {'ok' if ok else 'WRONG'}")
    path = directory / "timings.json"
    path.write_text(json.dumps({"device": torch.cuda.get_device_name(), "shape": TUNE_SHAPE,
                                "results": results}, indent=1))
    return path


def record_best(timings: Path, db: Optional[Path] = None) -> dict:
    """Write the fastest correct schedule per (arch, dtype, dv, regular or short kernel) into the
    tuning DB; returns them."""
    data = json.loads(Path(timings).read_text())
    best: dict = {}
    for r in data["results"]:
        short = bool(r.get("short"))
        tuning_shape = list(SHORT_TUNE_SHAPE if short else TUNE_SHAPE)
        if r.get("shape", tuning_shape) != tuning_shape:
            continue  # a study at another shape
        key = (r["arch"], r["dtype"], r["dv"], short)
        if r["correct"] and (key not in best or r["ms"] < best[key]["ms"]):
            best[key] = r
    for (arch, dtype, dv, short), r in best.items():
        record_schedule(arch, dtype, dv, CudaAttentionSchedule(**r["schedule"]), db=db,
                        short=short)
    return {f"{a}/{d}/dv{v}{'/short' if sh else ''}": r for (a, d, v, sh), r in best.items()}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("time", "record"):
        sys.exit("usage: python -m binattn.tvm_kernels.cuda.tune time DIR | record TIMINGS.json")
    if sys.argv[1] == "time":
        print(time_candidates(Path(sys.argv[2])))
    else:
        for key, r in record_best(Path(sys.argv[2])).items():
            print(f"{key}: {r['schedule']} {r['ms'] * 1e3:.1f} µs")
