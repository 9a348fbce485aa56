"""``binattn asic``: emit the simulated CAM-accelerator target descriptor of a model (or of one
attention shape) and compare it with a standard-attention accelerator."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ..errors import UserError
from ._model_args import force_option, model_input_options


def _list_targets() -> None:
    from rich.console import Console
    from rich.table import Table

    from ..hw_targets import PRESETS

    table = Table(title="hardware presets")
    for col in ("name", "kind", "node", "clock GHz", "area mm²", "notes"):
        table.add_column(col)
    for name, hw in PRESETS.items():
        notes = (f"{hw.cam_tiles}× {hw.cam_rows}×{hw.cam_cols} CAM, {hw.adc_bits}-bit ADC, "
                 f"top-{hw.topk_outputs}, {hw.mac_count} MACs") if hw.kind == "cam" else (
                 f"{hw.mac_count} bf16 MACs, {hw.exp_units} exp units")
        table.add_row(name, hw.kind, f"{hw.tech_nm} nm", f"{hw.clock_ghz:g}",
                      f"{hw.area_um2 / 1e6:.4f}", notes)
    Console().print(table)


@click.command("asic")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--attention", "attention", metavar="SEQ,D,HEADS[,TOPK]",
              help="Cost one self-attention of this shape instead of a model.")
@click.option("--target", default="had-cam-45nm", show_default=True,
              help="Hardware preset (see --list-targets).")
@click.option("--hardware", "hardware_file", type=click.Path(path_type=Path),
              help="Hardware JSON (a descriptor's 'hardware' block, edited) instead of --target.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the target descriptor (JSON, schema-validated) here.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print the descriptor JSON on stdout.")
@click.option("--report", is_flag=True,
              help="Print the per-site table and write a PNG energy/area breakdown.")
@click.option("--png", type=click.Path(path_type=Path),
              help="PNG path for --report (default: next to -o, else ./asic_report.png).")
@click.option("--top-k", type=int, help="Cost every site with this top-N (HAD) instead of its own.")
@model_input_options
@click.option("--list-targets", is_flag=True, help="List the hardware presets and exit.")
def command(model: Optional[Path], attention: Optional[str], target: str,
            hardware_file: Optional[Path], output: Optional[Path], force: bool, as_json: bool,
            report: bool, png: Optional[Path], top_k: Optional[int], inputs: tuple[str, ...],
            input_shape: Optional[str], trust_pickle: bool, list_targets: bool) -> None:
    """Cost MODEL's binary attention on a simulated CAM accelerator.

    Binarizes MODEL (a .pt2, a torch.save'd module or a Hugging Face directory), maps every
    attention site onto the accelerator (CAM tiles, ADCs, top-k, LUT softmax, MACs) and onto
    a standard bf16 attention accelerator with the same SRAM and DRAM, and writes the target
    descriptor: hardware, per-site mapping (shapes, tiles, cycles, energy), totals, baseline,
    area and power reductions. `--attention 1024,64,16,32` checks the CAMformer calibration.
    An existing -o file needs --force.

    \b
    Examples:
      binattn asic --attention 1024,64,16,32 --json
      binattn asic model.pt2 --target had-cam-7nm -o target.json --report
    """
    if list_targets:
        _list_targets()
        return
    from rich.console import Console

    from ..hw_targets import (attention_site, build_descriptor, parse_attention, resolve_target,
                              site_specs, write_descriptor)
    from ..hw_targets.report import comparison_table, sites_table, write_png

    from ._model_args import refuse_existing

    if (model is None) == (attention is None):
        raise UserError("give either MODEL or --attention SEQ,D,HEADS[,TOPK] (exactly one)")
    refuse_existing(output, force)
    hw = resolve_target(target, hardware_file)
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if attention is not None:
        sites, name = [attention_site(parse_attention(attention))], f"attention {attention}"
    else:
        from ..export.loading import load_binarized
        from ..model_inputs import parse_input_specs
        from ..model_io import parse_input_shapes

        with Console(stderr=True).status(f"loading and binarizing {model}"):
            gm, _ = load_binarized(model, trust_pickle=trust_pickle,
                                   input_shape=parse_input_shapes(input_shape),
                                   inputs=parse_input_specs(inputs))
        sites, name = site_specs(gm, top_k=top_k), str(model)
    doc = build_descriptor(hw, sites, model=name)
    if output is not None:
        write_descriptor(doc, output)
    console = Console(stderr=as_json)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        console.print(comparison_table(doc))
    if report:
        console.print(sites_table(doc))
        png_path = png or (output.with_suffix(".png") if output else Path("asic_report.png"))
        console.print(f"report plot: {write_png(doc, png_path)}")
    if output is not None:
        console.print(f"target descriptor: {output}")
