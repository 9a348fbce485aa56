"""``binattn demo``: the whole product on the built-in ViT, in a few minutes on a CPU."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--out-dir", type=click.Path(path_type=Path), default=Path("out/demo"),
              show_default=True, help="Where the demo writes its files (descriptor, plots).")
@click.option("--quick", is_flag=True, help="Fewer training steps and benchmark sizes.")
def command(out_dir: Path, quick: bool) -> None:
    """Run the end-to-end demo on the built-in ViT.

    Checks the ops, finds and rewrites the attention, trains briefly, runs the TVM kernels,
    compares speed and accuracy with full precision, and emits the ASIC descriptor.
    """
    from ..demo import run_demo

    run_demo(out_dir, quick=quick)
