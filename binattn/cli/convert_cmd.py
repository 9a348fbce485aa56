"""``binattn convert``: binarize a model's attention and save it as a ``.pt2`` ExportedProgram.

What it does: loads MODEL with its example inputs (``--input``, or synthesized), binarizes it,
exports the result with the batch and sequence dims dynamic (unless ``--static``) and writes it
atomically, refusing an existing OUTPUT without ``--force``. An explicit ``--grid`` must fit
every self-attention site. What it does not: train the learned biases (``binattn train``).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import click

from ..errors import UserError
from ._model_args import force_option, model_input_options

BIAS_CHOICES = ["relpos", "relpos_1d", "dense", "head", "none"]


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


def check_grid_fits(report, grid: tuple[int, int]) -> None:
    """``--grid`` is explicit: a self-attention site whose sequence it does not fit (the pass
    gave it the fallback bias, with the reason) is an error, not a silent fallback."""
    for row in report.rows:
        shape = row.shape or {}
        if "(relpos: " in (row.bias or "") and shape.get("Nq") == shape.get("Nk"):
            why = row.bias.split("(relpos: ", 1)[1][:-1].replace("num_prefix_tokens",
                                                                  "--prefix-tokens")
            raise UserError(f"--grid {grid[0]}x{grid[1]} does not fit the sequence of "
                            f"{row.module_path or 'site ' + str(row.index)} (N={shape['Nq']}): "
                            f"{why}")


def _has_sequence_bias(gm) -> bool:
    """A learned bias sized for the example's sequence (relpos index, dense [H, N, N]): the
    sequence dims are then exported static."""
    from ..ops.bias import DenseBias, RelPosBias

    return any(isinstance(m, (DenseBias, RelPosBias)) for m in gm.modules())


def _dynamic_dims(program) -> str:
    """``input_ids [*, *], pixel_values [*, 3, 32, 32]`` (``*``: dynamic) of a program."""
    import torch

    from ..model_io import user_placeholders

    parts = []
    for name, val in user_placeholders(program):
        dims = ", ".join("*" if isinstance(s, torch.SymInt) else str(s) for s in val.shape)
        parts.append(f"{name} [{dims}]")
    return ", ".join(parts)


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output .pt2 file (written only when everything succeeded).")
@force_option
@click.option("--bias", type=click.Choice(BIAS_CHOICES), default="none", show_default=True,
              help="Learned bias per site (relpos: BEiT table over the token grid; relpos_1d: "
              "a table over 1-D offsets within ±32 tokens, any sequence length).")
@click.option("--grid", help="Token grid GHxGW for --bias relpos (default: from the model); "
              "must fit every self-attention site's sequence.")
@click.option("--prefix-tokens", type=int, help="cls/register tokens before the grid "
              "(default: what the model declares, else N − Gh·Gw when that is 0 or 1).")
@click.option("--scale-mode", type=click.Choice(["mean_abs", "none"]), default="mean_abs",
              show_default=True, help="Magnitude of the binarized q and k.")
@click.option("--top-n", type=int, help="HAD top-N: keep the N largest scores per query.")
@click.option("--pv-bits", type=click.Choice(["8"]), help="8-bit P and V.")
@click.option("--static", is_flag=True, help="Pin every input dim to the example inputs' "
              "(default: batch and sequence dims dynamic where the model allows it).")
@model_input_options
def command(model: Path, output: Path, force: bool, bias: str, grid: Optional[str],
            prefix_tokens: Optional[int], scale_mode: str, top_n: Optional[int],
            pv_bits: Optional[str], static: bool, inputs: tuple[str, ...],
            input_shape: Optional[str], trust_pickle: bool) -> None:
    """Rewrite every attention of MODEL to 1-bit query/key attention and save a .pt2.

    The .pt2 holds torch.ops.binattn.binary_attention calls: load it with
    torch.export.load after `import binattn`. Its outputs are plain dicts/tuples of tensors
    (a Hugging Face model's ModelOutput becomes a dict), it takes the model's named inputs
    in the order printed at the end (attention_mask included for text models) and its batch
    and sequence dims are dynamic unless --static. Sites that cannot be rewritten exactly stay
    float and are listed with the reason. A model without attention is an error; nothing is
    written at OUTPUT unless the conversion succeeded, and an existing OUTPUT needs --force.
    Learned biases start untrained (train with `binattn train`).

    \b
    Examples:
      binattn convert vit.pt -o vit_binary.pt2 --bias relpos --trust-pickle
      binattn convert ./all-MiniLM-L6-v2 -o minilm_binary.pt2 --input-shape 1,32
      binattn convert ./t5 -o t5.pt2 --input input_ids=2,16:int64 \\
          --input decoder_input_ids=2,8:int64
    """
    import torch

    from ..binarize_pass import BinarizeConfig, binarize
    from .._files import atomic_output
    from ._console import quiet_torch_logs, report_console
    from ._model_args import load_from_options, refuse_existing

    if output.suffix != ".pt2":
        raise UserError(f"output must be a .pt2 file, got {output}")
    if top_n is not None and top_n < 1:
        raise UserError(f"--top-n must be >= 1, got {top_n}")
    try:
        config = BinarizeConfig(bias=None if bias == "none" else bias, grid=_grid(grid),
                                num_prefix_tokens=prefix_tokens, scale_mode=scale_mode,
                                top_n=top_n, pv_bits=int(pv_bits) if pv_bits else None,
                                dynamic_batch=not static)
    except ValueError as err:
        raise UserError(str(err)) from err
    console = report_console()
    with console.status(f"loading {model}"), quiet_torch_logs():
        loaded = load_from_options(model, trust_pickle, input_shape, inputs)
    refuse_existing(output, force)  # after MODEL's own errors, before the slow capture
    dynamic = None if static else loaded.dynamic_shapes
    with console.status("capturing (torch.export) and rewriting the attention"), \
            quiet_torch_logs(), loaded.naming_inputs():
        gm = binarize(loaded.model, loaded.inputs, config, dynamic_shapes=dynamic)
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
    if config.grid is not None and config.bias == "relpos":
        check_grid_fits(report, config.grid)
    if not static and (dynamic is None or _has_sequence_bias(gm)):
        from ..binarize_pass.capture import default_dynamic_shapes
        dynamic = default_dynamic_shapes(loaded.inputs)  # the batch dim only
    with console.status("exporting the binarized graph and saving"), quiet_torch_logs():
        program = _export(gm, loaded.inputs, dynamic)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        with atomic_output(output) as tmp:
            tmp.write_bytes(buffer.getvalue())
    console.print(f"wrote {output}: {report.num_rewritten} binary attention site(s)"
                  + (f", {report.num_skipped} left float" if report.num_skipped else "")
                  + f"; inputs {_dynamic_dims(program)} (* dynamic)")


def _export(gm, inputs: tuple, dynamic) -> "torch.export.ExportedProgram":
    """Export the binarized graph with ``dynamic`` dims (static where the graph pins them)."""
    import torch

    try:
        return torch.export.export(gm, tuple(inputs), strict=False, dynamic_shapes=dynamic)
    except Exception as err:  # noqa: BLE001
        text = str(err).strip()
        raise UserError(f"the binarized model failed to export: {type(err).__name__}: "
                        f"{text.splitlines()[0] if text else ''}") from err
