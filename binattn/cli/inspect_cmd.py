"""``binattn inspect``: list a model's attention sites and what the binarize pass would do."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input-shape", help="Example input shape, e.g. 1,3,224,224; several inputs: "
              "'2,7,32;2,7,32' (default: what the model declares: its .pt2 inputs, image size "
              "or a 16-token sequence).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a torch.save'd MODEL that holds code (only for files you trust).")
def command(model: Path, input_shape: Optional[str], as_json: bool, trust_pickle: bool) -> None:
    """Show every attention site of MODEL: where it is, which matcher found it, its shapes
    (B, H, Nq×Nk, D), mask and causality, and "rewritten" or "skipped: <reason>".

    MODEL is a .pt2 ExportedProgram, a torch.save'd module (loaded with weights_only unless
    --trust-pickle) or a Hugging Face model directory. Nothing is written. A model without
    attention gets a report saying so (exit code 0).

    \b
    Examples:
      binattn inspect vit.pt2
      binattn inspect ./all-MiniLM-L6-v2 --input-shape 1,32 --json
    """
    from ..binarize_pass import inspect
    from ..model_io import load_model, parse_input_shapes

    from ._console import quiet_torch_logs, report_console

    console = report_console(stderr=as_json)
    with console.status(f"loading {model}"), quiet_torch_logs():
        loaded, inputs = load_model(model, trust_pickle=trust_pickle,
                                    input_shape=parse_input_shapes(input_shape))
    with console.status("capturing the graph (torch.export) and matching attention"), \
            quiet_torch_logs():
        report = inspect(loaded, inputs)
    report.model = model.name
    if as_json:
        click.echo(report.to_json())
        return
    console.print(report.table() if report.rows else report.summary)
    for note in report.notes:
        console.print(note)
