"""``binattn convert``: binarize a model's attention and save it as a ``.pt2`` ExportedProgram."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import click

from ..errors import UserError

BIAS_CHOICES = ["relpos", "dense", "head", "none"]


def _grid(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        gh, gw = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--grid wants GHxGW, e.g. 14x14, got {text!r}") from None
    if gh < 1 or gw < 1:
        raise UserError(f"--grid wants positive sizes, got {text!r}")
    return gh, gw


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output .pt2 file (written only when everything succeeded).")
@click.option("--bias", type=click.Choice(BIAS_CHOICES), default="none", show_default=True,
              help="Learned bias per site (relpos: BEiT table over the token grid).")
@click.option("--grid", help="Token grid GHxGW for --bias relpos (default: from the model).")
@click.option("--prefix-tokens", type=int, help="cls/register tokens before the grid.")
@click.option("--scale-mode", type=click.Choice(["mean_abs", "none"]), default="mean_abs",
              show_default=True, help="Magnitude of the binarized q and k.")
@click.option("--top-n", type=int, help="HAD top-N: keep the N largest scores per query.")
@click.option("--pv-bits", type=click.Choice(["8"]), help="8-bit P and V.")
@click.option("--input-shape", help="Example input shape, e.g. 1,3,224,224; several inputs: "
              "'2,7,32;2,7,32'.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a torch.save'd MODEL that holds code (only for files you trust).")
def command(model: Path, output: Path, bias: str, grid: Optional[str],
            prefix_tokens: Optional[int], scale_mode: str, top_n: Optional[int],
            pv_bits: Optional[str], input_shape: Optional[str], trust_pickle: bool) -> None:
    """Rewrite every attention of MODEL to 1-bit query/key attention and save a .pt2.

    The .pt2 holds torch.ops.binattn.binary_attention calls: load it with
    torch.export.load after `import binattn`. Sites that cannot be rewritten exactly stay
    float and are listed with the reason. A model without attention is an error; nothing is
    written at OUTPUT unless the conversion succeeded. Learned biases start untrained
    (train with `binattn train`).

    \b
    Examples:
      binattn convert vit.pt -o vit_binary.pt2 --bias relpos --trust-pickle
      binattn convert ./all-MiniLM-L6-v2 -o minilm_binary.pt2 --input-shape 1,32
    """
    import torch

    from ..binarize_pass import BinarizeConfig, binarize
    from ..export.files import atomic_output
    from ..model_io import load_model, parse_input_shapes
    from ._console import quiet_torch_logs, report_console

    if output.suffix != ".pt2":
        raise UserError(f"output must be a .pt2 file, got {output}")
    if top_n is not None and top_n < 1:
        raise UserError(f"--top-n must be >= 1, got {top_n}")
    try:
        config = BinarizeConfig(bias=None if bias == "none" else bias, grid=_grid(grid),
                                num_prefix_tokens=prefix_tokens, scale_mode=scale_mode,
                                top_n=top_n, pv_bits=int(pv_bits) if pv_bits else None)
    except ValueError as err:
        raise UserError(str(err)) from err
    console = report_console()
    with console.status(f"loading {model}"), quiet_torch_logs():
        loaded, inputs = load_model(model, trust_pickle=trust_pickle,
                                    input_shape=parse_input_shapes(input_shape))
    with console.status("capturing (torch.export) and rewriting the attention"), \
            quiet_torch_logs():
        gm = binarize(loaded, inputs, config)
    report = gm.meta["binattn_report"]
    report.model = model.name
    if report.rows:
        console.print(report.table())
    for note in report.notes:
        console.print(note)
    if report.num_rewritten == 0:
        raise UserError(f"{model}: no attention site could be rewritten "
                        f"({'none found' if not report.rows else 'all skipped'}); "
                        f"nothing written")
    with console.status("exporting the binarized graph and saving"), quiet_torch_logs():
        try:
            program = torch.export.export(gm, tuple(inputs), strict=False)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"the binarized model failed to export: {type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                            ) from err
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        with atomic_output(output) as tmp:
            tmp.write_bytes(buffer.getvalue())
    console.print(f"wrote {output}: {report.num_rewritten} binary attention site(s)"
                  + (f", {report.num_skipped} left float" if report.num_skipped else ""))
