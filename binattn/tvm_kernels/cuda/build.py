"""Build binattn's CUDA kernels with TVM + nvcc into small shared objects that need no TVM to run.

What it does: for each requested arch (``sm_90a``, ``sm_80``, …) puts every attention kernel
(one per dtype × value-head bucket × no bias / dense bias / bias table, with the tuned schedule
from ``binattn.schedules``) and every sign-pack kernel and the popcount-scores kernel in one
IRModule, compiles it with TVM for ``{"kind": "cuda", "arch": ...}`` and
host ``cuda_host`` (TVM_NOTES §2 route 1), writes the generated CUDA C++ next to the library and
compiles it with nvcc against the apache-tvm-ffi headers (static cudart; the sm_80 build also
carries PTX so newer GPUs can JIT it). ``manifest.json`` lists what each library holds; the
runtime (``cuda_dispatch``) reads only the manifest and the .so files.

Works on a machine without a GPU (these CPU machines: nvcc 13.0). What it does not: load or run
kernels (``cuda_dispatch``), time them (``benchmarks/gpu_attention.py``), or tune.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ...schedules.cuda import attention as sched

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 4  # 4: q, k, v and the output are read/written through their strides (4-D
#                      sign-pack inputs); 3: a bias-table index; 2: d_bits (older: not loaded)
# the modules whose code the libraries are generated from (kernel_sources_hash)
KERNEL_SOURCES = ("tvm_kernels/cuda/attention.py", "tvm_kernels/cuda/attention_pv8.py",
                  "tvm_kernels/cuda/sign_pack.py", "tvm_kernels/cuda/quantize_v.py",
                  "tvm_kernels/cuda/popcount.py", "tvm_kernels/cuda/build.py",
                  "schedules/cuda/attention.py", "schedules/cuda/cuda_tuned.json")
SUPPORTED_ARCHS = ("sm_90a", "sm_90", "sm_80", "sm_86", "sm_89")


def library_name(arch: str) -> str:
    """File name of the shared object for one arch."""
    return f"binattn_cuda_{arch}.so"


def parse_archs(text: str) -> list[str]:
    """``"sm_90a,sm_80"`` → ``["sm_90a", "sm_80"]``; ValueError naming an unknown arch."""
    archs = [a.strip() for a in text.split(",") if a.strip()]
    if not archs:
        raise ValueError("no arch given (e.g. --arch sm_90a,sm_80)")
    for arch in archs:
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported arch {arch!r}; choose from {', '.join(SUPPORTED_ARCHS)}")
    return archs


def find_nvcc() -> str:
    """Path of nvcc (``$CUDA_HOME/bin``, then PATH); RuntimeError when there is none."""
    for cand in (os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"),
                 shutil.which("nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    raise RuntimeError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")


def generate_source(arch: str, dtypes: Sequence[str] = sched.DTYPES,
                    dvs: Sequence[int] = sched.DV_BUCKETS) -> tuple[str, dict]:
    """CUDA C++ (device kernels + tvm-ffi host wrappers) for one arch, and what it contains."""
    import tvm  # the TVM compiler is needed only here

    from .attention import attention_func, attention_name, table_rows, table_schedule
    from .attention_pv8 import attention_pv8_func, attention_pv8_name, pv8_table_rows
    from .quantize_v import v8_amax_func, v8_amax_name, v8_pack_func, v8_pack_name
    from .popcount import popcount_scores_func, popcount_scores_name
    from .sign_pack import (DTYPES as PACK_DTYPES, VEC_LANES, sign_pack_func, sign_pack_name,
                            sign_pack_qk_func, sign_pack_qk_name, sign_pack_vec_func)

    funcs, contents = {}, {"attention": {}, "sign_pack": list(PACK_DTYPES), "schedules": {},
                           "sign_pack_vec": [d for d in PACK_DTYPES if d != "float32"],
                           "sign_pack_qk": [d for d in PACK_DTYPES if d != "float32"],
                           "attention_short": {}, "short_max_keys": sched.SHORT_MAX_KEYS,
                           "attention_pv8": {}, "table_rows": {}}
    for dtype in dtypes:
        for dv in dvs:
            schedule = sched.schedule_for(arch, dtype, dv)
            if schedule.wgmma_pv and arch != "sm_90a":  # warpgroup MMA exists on sm_90a only
                schedule = replace(schedule, wgmma_pv=0)
            short = sched.schedule_for(arch, dtype, dv, short=True)
            for has_bias, table in ((False, False), (True, False), (True, True)):
                kernels = [(schedule, False)] + [(short, True)] * (short != schedule)
                for kernel_schedule, is_short in kernels:  # short: only where it differs
                    if table:
                        kernel_schedule = table_schedule(dv, kernel_schedule)
                        key = f"{dtype}/dv{dv}{'/short' if is_short else ''}"
                        contents["table_rows"][key] = table_rows(dv, kernel_schedule)
                    symbol = attention_name(dtype, dv, has_bias, is_short, table)
                    funcs[symbol] = attention_func(dtype, dv, kernel_schedule, has_bias,
                                                   table).with_attr("global_symbol", symbol)
            contents["attention"].setdefault(dtype, []).append(dv)
            # pv_bits=8: two passes, P and V on 8-bit tensor cores
            for has_bias, table in ((False, False), (True, False), (True, True)):
                funcs[attention_pv8_name(dtype, dv, has_bias, table)] = attention_pv8_func(
                    dtype, dv, has_bias, table)
            contents["table_rows"][f"pv8/{dtype}/dv{dv}"] = pv8_table_rows(dv)
            contents["attention_pv8"].setdefault(dtype, []).append(dv)
            if short != schedule:
                contents["attention_short"].setdefault(dtype, []).append(dv)
            contents["schedules"][f"{dtype}/dv{dv}"] = asdict(schedule)
            contents["schedules"][f"{dtype}/dv{dv}/short"] = asdict(short)
    for dtype in PACK_DTYPES:
        funcs[sign_pack_name(dtype)] = sign_pack_func(dtype)
        if dtype != "float32":
            for lanes in VEC_LANES:
                funcs[sign_pack_name(dtype, True, lanes)] = sign_pack_vec_func(dtype, lanes)
                funcs[sign_pack_qk_name(dtype, lanes)] = sign_pack_qk_func(dtype, lanes)
    for dtype in dtypes:  # V for the 8-bit kernel: max|v| per column, then int8, permuted
        funcs[v8_amax_name(dtype)] = v8_amax_func(dtype)
        funcs[v8_pack_name(dtype)] = v8_pack_func(dtype)
    funcs[popcount_scores_name()] = popcount_scores_func()
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "cuda_host"})
    executable = tvm.compile(tvm.IRModule(funcs), target=target)
    return tvm.backend.cuda.export_cuda_host(executable.mod), contents


def nvcc_command(arch: str, source: Path, output: Path) -> list[str]:
    """The nvcc command line that turns generated source into a tvm-ffi loadable .so."""
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    compute = arch.replace("sm_", "compute_")
    gencode = [f"-gencode=arch={compute},code={arch}"]
    if not arch.endswith("a"):  # architecture-specific (a) features cannot ship as portable PTX
        gencode.append(f"-gencode=arch={compute},code={compute}")
    return [find_nvcc(), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
            "-cudart", "static", *gencode, f"-I{ffi / 'include'}",
            f"-I{ffi / 'include' / 'dlpack'}", f"-L{ffi / 'lib'}", "-ltvm_ffi",
            "-o", str(output), str(source)]


def kernel_sources_hash() -> str:
    """sha256 of the code the CUDA libraries are generated from (:data:`KERNEL_SOURCES`): the
    Python modules as their syntax trees without docstrings (so a reworded docstring or comment
    needs no rebuild, any code change does), the tuning database as its text. The manifest
    records it per library; a test fails when the sources moved on without a rebuild."""
    import ast

    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        text = (root / rel).read_text()
        if rel.endswith(".py"):
            tree = ast.parse(text)
            for node in ast.walk(tree):
                body = getattr(node, "body", None)
                if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                        and isinstance(getattr(body[0], "value", None), ast.Constant)
                        and isinstance(body[0].value.value, str)):
                    node.body = body[1:] or [ast.Pass()]
            text = ast.dump(tree)
        digest.update(rel.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_arch(arch: str, out_dir: Path, dtypes: Sequence[str] = sched.DTYPES,
               dvs: Sequence[int] = sched.DV_BUCKETS, keep_source: bool = True) -> dict:
    """Generate, compile and describe the library of one arch; returns its manifest entry."""
    started = time.time()
    source_text, contents = generate_source(arch, dtypes, dvs)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        source = Path(tmp) / f"binattn_cuda_{arch}.cu"
        source.write_text(source_text)
        lib_tmp = Path(tmp) / library_name(arch)
        proc = subprocess.run(nvcc_command(arch, source, lib_tmp), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {arch}:\n{proc.stderr[-4000:]}")
        lib = out_dir / library_name(arch)
        os.replace(lib_tmp, lib)
        if keep_source:
            os.replace(source, out_dir / source.name)
    return {"file": lib.name, "sha256": _sha256(lib), "bytes": lib.stat().st_size,
            "sources_sha256": kernel_sources_hash(),
            "ptx": not arch.endswith("a"), "build_seconds": round(time.time() - started, 1),
            **contents}


def build(archs: Iterable[str], out_dir: Path, dtypes: Sequence[str] = sched.DTYPES,
          dvs: Sequence[int] = sched.DV_BUCKETS, keep_source: bool = True,
          on_arch: Optional[Callable[[str], None]] = None) -> Path:
    """Build every arch into ``out_dir`` and (re)write its manifest; returns the manifest path.

    Entries of archs not rebuilt now are kept when their files are still there.
    """
    import tvm_ffi

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = read_manifest(out_dir) or {}
    libs = {a: e for a, e in manifest.get("libraries", {}).items()
            if (out_dir / e["file"]).exists()}
    archs = list(archs)

    def one(arch: str) -> dict:
        if on_arch:
            on_arch(arch)
        return build_arch(arch, out_dir, dtypes, dvs, keep_source)

    # nvcc runs outside the GIL: archs compile side by side
    with ThreadPoolExecutor(max_workers=max(1, min(len(archs), os.cpu_count() or 1))) as pool:
        for arch, entry in zip(archs, pool.map(one, archs)):
            libs[arch] = entry
    manifest = {"format": MANIFEST_FORMAT, "tvm_ffi": tvm_ffi.__version__, "libraries": libs}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(manifest_path)
    return manifest_path


def read_manifest(directory: Path) -> Optional[dict]:
    """The manifest of a kernel directory, or None when absent or not a binattn manifest."""
    try:
        data = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
