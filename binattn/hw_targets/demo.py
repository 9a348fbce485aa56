"""The ASIC step of ``binattn demo``: binarize the demo ViT, cost it on ``had-cam-45nm`` (with
HAD's top-N), write the target descriptor + PNG, print the comparison and node-scaling tables.

What it does not: train (the costs depend on shapes and options, not on weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from .cost_model import cam_query_cost
from .descriptor import build_descriptor, read_descriptor, resolve_target, write_descriptor
from .report import comparison_table, write_png
from .sites import site_specs

DEMO_TOP_N = 16


def scaling_table(specs, nodes=(45, 28, 7)) -> Table:
    """The same model on each node: energy, power, area and reductions."""
    table = Table(title=f"node scaling (rule: docs/asic.md), top-N {DEMO_TOP_N}")
    for col in ("target", "energy µJ", "power mW", "area mm²", "area −", "power −"):
        table.add_column(col, justify="right")
    for nm in nodes:
        doc = build_descriptor(resolve_target(f"had-cam-{nm}nm"), specs)
        t = doc["totals"]
        table.add_row(doc["target"], f"{t['energy_nj'] / 1e3:.2f}", f"{t['power_mw']:.1f}",
                      f"{t['area_mm2']:.4f}", f"{doc['area_reduction']:.0%}",
                      f"{doc['power_reduction']:.0%}")
    return table


def run(model: torch.nn.Module, out_dir: Path, console: Console) -> dict[str, Any]:
    """Cost ``model`` (a TinyViT) and write ``out_dir/asic_target.json`` + ``.png``."""
    from ..binarize_pass import BinarizeConfig, binarize

    cfg = model.cfg
    example = (torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size),)
    gm = binarize(model.eval(), example, BinarizeConfig(top_n=DEMO_TOP_N, dynamic_batch=False))
    specs = site_specs(gm)
    target = resolve_target("had-cam-45nm")
    doc = build_descriptor(target, specs, model="demo ViT (binarized, top-N 16)")
    path = write_descriptor(doc, Path(out_dir) / "asic_target.json")
    read_descriptor(path)                                   # schema-valid on read as well
    png = write_png(doc, path.with_suffix(".png"))
    console.print(comparison_table(doc))
    console.print(scaling_table(specs))
    calib = cam_query_cost(target, _calibration_shape())
    console.print(f"descriptor: {path} ({len(doc['sites'])} sites), plot: {png}; calibration "
                  f"point (N=1024, d=64, top-32): {calib.cycles:.0f} cycles, "
                  f"{calib.energy_nj:.1f} nJ vs CAMformer 721 / 54.9")
    return {"descriptor": str(path), "area_reduction": doc["area_reduction"],
            "power_reduction": doc["power_reduction"], "energy_nj": doc["totals"]["energy_nj"]}


def _calibration_shape():
    from .cost_model import AttentionShape
    return AttentionShape.square(1024, 64, 16, 32)
