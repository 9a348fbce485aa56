"""``binattn export``: a model's binarized graph as MLIR (torch-mlir) or ONNX
(onnxruntime-checked)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..errors import UserError
from ._model_args import force_option, model_input_options

TOLERANCE = 1e-4
# with 8-bit P, round(P·255) can land on the other side of .5 in onnxruntime's float math:
# one u8 level (1/255) times |v| per flipped entry
PV8_TOLERANCE = 1e-2


def _run_mlir(console, text: str, dialect: str, gm, inputs: tuple, output: Path) -> None:
    """Execute the linalg module via MLIR's ExecutionEngine and compare with PyTorch."""
    from ..export.mlir_run import compare

    with console.status("lowering the MLIR to LLVM and running it"):
        err, reason = compare(text, gm, inputs)
    if err is None:
        console.print(f"--run skipped: {reason}")
    else:
        console.print(f"ran through MLIR's ExecutionEngine: max |MLIR − PyTorch| = {err:.2e}")
        if not err <= TOLERANCE:
            output.unlink(missing_ok=True)
            raise UserError(f"the MLIR computes something else: max |err| {err:.3g} > {TOLERANCE}")


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mlir", "onnx"]), required=True,
              help="mlir: torch-mlir text; onnx: standard-op ONNX checked in onnxruntime.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output file (.mlir / .onnx).")
@force_option
@click.option("--dialect", default="linalg-on-tensors", show_default=True,
              type=click.Choice(["linalg-on-tensors", "torch", "tosa", "stablehlo"]),
              help="MLIR dialect (tosa/stablehlo get a shift-free int32 popcount).")
@click.option("--top-n", type=int, help="Binarize with HAD's top-N per query row.")
@click.option("--pv-bits", type=click.Choice(["8"]), help="8-bit P and V.")
@model_input_options
@click.option("--run", "run_mlir", is_flag=True,
              help="MLIR (linalg): also lower it to LLVM with torch-mlir's RefBackend passes, "
                   "run it on the example inputs and compare with PyTorch.")
@click.option("--no-check", is_flag=True,
              help="Skip the check (MLIR re-parse / onnxruntime vs PyTorch comparison).")
def command(model: Path, fmt: str, output: Path, force: bool, dialect: str,
            top_n: Optional[int], pv_bits: Optional[str], inputs: tuple[str, ...],
            input_shape: Optional[str], trust_pickle: bool, run_mlir: bool,
            no_check: bool) -> None:
    """Export MODEL's binarized graph to MLIR or ONNX.

    MODEL (a .pt2, a torch.save'd module or a Hugging Face directory) is binarized, exported
    with torch.export, and every binary attention is decomposed into integer bit operations —
    sign packing, XOR and a SWAR popcount (exact ±1 dot products) — so no float matmul is left
    for QKᵀ. MLIR is parsed again with torch-mlir's bindings; ONNX is run in onnxruntime and
    compared with the PyTorch binarized model (fails above 1e-4; 1e-2 with 8-bit P, where
    one u8 rounding may differ). The export is static (the example inputs' shapes: --input
    NAME=SHAPE[:DTYPE] sets them). An existing OUTPUT needs --force.

    \b
    Examples:
      binattn export model.pt2 --format mlir -o out.mlir --run
      binattn export ./all-MiniLM-L6-v2 --format onnx -o minilm.onnx
    """
    from rich.console import Console

    from .._files import write_text
    from ..export.loading import load_binarized
    from ..model_inputs import parse_input_specs
    from ..model_io import parse_input_shapes
    from ._model_args import refuse_existing

    console = Console()
    refuse_existing(output, force)
    if top_n is not None and top_n < 1:
        raise UserError(f"--top-n must be >= 1, got {top_n}")
    gm, inputs = load_binarized(model, trust_pickle=trust_pickle,
                                input_shape=parse_input_shapes(input_shape), top_n=top_n,
                                pv_bits=int(pv_bits) if pv_bits else None, dynamic_batch=False,
                                inputs=parse_input_specs(inputs))
    if run_mlir and (fmt != "mlir" or dialect != "linalg-on-tensors"):
        raise UserError("--run needs --format mlir --dialect linalg-on-tensors")
    if fmt == "mlir":
        from ..export.mlir import bit_op_summary, reparse, to_mlir

        with console.status(f"lowering to MLIR ({dialect}) through torch-mlir"):
            text = to_mlir(gm, inputs, dialect)
            if not no_check:
                reparse(text)
        write_text(output, text)
        ops = bit_op_summary(text)
        console.print(f"wrote {output} ({len(text) / 1e6:.1f} MB, {dialect}); attention as bit "
                      f"ops: {ops['xor'] or ops['torch_xor']} xor, {ops['and']} and, "
                      f"{ops['shift']} shifts"
                      + ("" if no_check else "; re-parsed with torch-mlir: OK"))
        if run_mlir:
            _run_mlir(console, text, dialect, gm, inputs, output)
        return
    from ..export.onnx import check_onnx, to_onnx

    with console.status("exporting to ONNX (torch.onnx dynamo, opset 20)"):
        to_onnx(gm, inputs, output)
    if no_check:
        console.print(f"wrote {output}")
        return
    err = check_onnx(output, gm, inputs)
    console.print(f"wrote {output}; onnxruntime vs PyTorch (binarized): max |err| = {err:.2e}")
    tolerance = PV8_TOLERANCE if pv_bits else TOLERANCE
    if not err <= tolerance:
        output.unlink(missing_ok=True)
        raise UserError(f"ONNX output differs from PyTorch by {err:.3g} (> {tolerance})")
