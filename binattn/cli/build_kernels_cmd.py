"""``binattn build-kernels``: build the CUDA kernels with TVM + nvcc into loadable shared objects.

What it does: parses ``--arch`` (``sm_90a,sm_80``), builds one library per arch with
``binattn.tvm_kernels.cuda.build`` (the tuned schedules of ``binattn tune --target cuda`` are
used when present), writes them plus ``manifest.json`` into ``-o DIR`` (default: the user
kernel cache that ``binattn`` searches after its package data), with a progress bar. Needs the
TVM compiler and nvcc, but no GPU. Bad arguments → one-line error, exit 2, nothing written.

What it does not: run or time kernels (``binattn bench --device cuda``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..errors import UserError


@click.command("build-kernels")
@click.option("--arch", "arch", default="sm_90a,sm_80", show_default=True,
              help="Comma-separated CUDA archs (sm_90a = H100/H200 with wgmma/setmaxnreg, "
                   "sm_80 = A100 and, through PTX, newer GPUs).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default: ~/.cache/binattn/cuda_kernels, searched at run "
                   "time).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float16", "bfloat16"]),
              help="Value dtypes to build attention kernels for (default: both).")
@click.option("--dv", "dvs", multiple=True, type=int,
              help="Value head sizes to build (default: 32 64 72 80 96 128 256).")
@click.option("--keep-source/--no-keep-source", default=True, show_default=True,
              help="Also write the generated CUDA C++ next to each library.")
def command(arch: str, output: Optional[Path], dtypes: tuple, dvs: tuple,
            keep_source: bool) -> None:
    """Build binattn's CUDA kernels (1-bit tensor-core attention, sign-pack, popcount scores).

    The libraries need only torch and apache-tvm-ffi to run: copy DIR to the GPU machine and
    point BINATTN_CUDA_KERNELS at it, or build into the default cache there.
    """
    from ..schedules.cuda import attention as sched
    from ..tvm_kernels.cuda import build as cuda_build, dispatch as cuda_dispatch

    try:
        archs = cuda_build.parse_archs(arch)
        cuda_build.find_nvcc()
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from None
    for dv in dvs:
        if dv % 8 or not 8 <= dv <= 256:
            raise UserError(f"--dv {dv}: value head sizes must be multiples of 8 in [8, 256]")
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise UserError("build-kernels needs the TVM compiler (pip install apache-tvm)") from None
    out = output or cuda_dispatch.user_kernel_dir()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("building", total=len(archs))

        def on_arch(a: str) -> None:
            bar.update(task, description=f"TVM + nvcc: {a}", advance=0 if a == archs[0] else 1)

        manifest = cuda_build.build(archs, out, dtypes=dtypes or sched.DTYPES,
                                    dvs=tuple(sorted(dvs)) or sched.DV_BUCKETS,
                                    keep_source=keep_source, on_arch=on_arch)
        bar.update(task, completed=len(archs))
    entries = cuda_build.read_manifest(out)["libraries"]
    for a in archs:
        click.echo(f"{a}: {out / entries[a]['file']} ({entries[a]['bytes'] / 1e6:.1f} MB, "
                   f"{entries[a]['build_seconds']} s)")
    click.echo(f"manifest: {manifest}")
