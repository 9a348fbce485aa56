"""``binattn inspect``: list a model's attention sites and what the binarize pass would do."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ._model_args import model_input_options


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@model_input_options
def command(model: Path, as_json: bool, inputs: tuple[str, ...], input_shape: Optional[str],
            trust_pickle: bool) -> None:
    """Show every attention site of MODEL: where it is, which matcher found it, its shapes
    (B, H, Nq×Nk, D), mask and causality, and "rewritten" or "skipped: <reason>".

    MODEL is a .pt2 ExportedProgram, a torch.save'd module (loaded with weights_only unless
    --trust-pickle) or a Hugging Face model directory (inputs synthesized from its config:
    text, vision, speech, encoder-decoder; or given with --input). Nothing is written. A model
    without attention gets a report saying so (exit code 0).

    \b
    Examples:
      binattn inspect vit.pt2
      binattn inspect ./all-MiniLM-L6-v2 --input-shape 1,32 --json
      binattn inspect ./t5-small --input input_ids=1,32:int64 --input decoder_input_ids=1,8:int64
    """
    from ..binarize_pass import inspect

    from ._console import quiet_torch_logs, report_console
    from ._model_args import load_from_options

    console = report_console(stderr=as_json)
    with console.status(f"loading {model}"), quiet_torch_logs():
        loaded = load_from_options(model, trust_pickle, input_shape, inputs)
    with console.status("capturing the graph (torch.export) and matching attention"), \
            quiet_torch_logs(), loaded.naming_inputs():
        report = inspect(loaded.model, loaded.inputs, dynamic_shapes=loaded.dynamic_shapes)
    report.model = model.name
    if as_json:
        click.echo(report.to_json())
        return
    console.print(report.table() if report.rows else report.summary)
    for note in report.notes:
        console.print(note)
