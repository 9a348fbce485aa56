"""Binarized model → MLIR text through torch-mlir, with binary attention as integer bit ops.

``to_mlir(module, example_inputs, dialect)``: ``torch.export`` → our ops decomposed into sign
packing + XOR + SWAR popcount (``bitops``) → ``torch_mlir.fx.export_and_import`` with torch-mlir's
own decompositions → text, then parsed back with torch-mlir's MLIR bindings (``reparse``).
``bit_op_summary`` counts what the QKᵀ became (``arith.xori``, shifts, and the matmuls left:
P·V).

Dialects: ``linalg-on-tensors`` (default; top-N's topk lowers to torch-mlir's ``tm_tensor.sort``,
written in MLIR's generic op form because the Python bindings do not register tm_tensor),
``torch`` (torch dialect, backend-neutral), ``tosa`` and ``stablehlo`` (generic form). tosa and
stablehlo reject the int64 shifts of the SWAR popcount (``aten.__rshift__.Scalar``, int64
``sub.Scalar``; TVM_NOTES §5), so for them the op is decomposed in its ``portable`` form: int32
packing and a bit-test popcount (AND with each 2^j, compare, sum). What it does not: compile or
run the MLIR.
"""
from __future__ import annotations

import re

import torch

from ..errors import UserError
from .bitops import count_binattn_nodes, decompose

DIALECTS = ("linalg-on-tensors", "torch", "tosa", "stablehlo")


def export_program(module: torch.nn.Module, example_inputs: tuple,
                   portable: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) with binattn's ops decomposed into bit operations."""
    if isinstance(module, torch.export.ExportedProgram):
        program = module
    else:
        program = torch.export.export(module, tuple(example_inputs), strict=False)
    program = decompose(program, portable=portable)
    left = count_binattn_nodes(program)
    if left:
        raise UserError(f"{left} binattn op(s) could not be decomposed for export")
    return program


def to_mlir(module: torch.nn.Module, example_inputs: tuple,
            dialect: str = "linalg-on-tensors") -> str:
    """MLIR text of the binarized ``module`` in ``dialect``; raises UserError if it cannot lower."""
    from torch_mlir import fx

    if dialect not in DIALECTS:
        raise UserError(f"--dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    portable = dialect in ("tosa", "stablehlo")         # no int64 shifts there
    program = export_program(module, example_inputs, portable).run_decompositions(
        fx.get_decomposition_table())
    program = _with_nonpersistent_buffers(program)
    try:   # decompositions already ran: an empty table makes torch-mlir skip (and re-verify)
        mlir_module = fx.export_and_import(program, output_type=dialect, decomposition_table={})
    except Exception as err:  # noqa: BLE001  (torch-mlir raises plain Exceptions)
        illegal = re.findall(r'name = "([^"]+)"', str(err))
        what = f" (cannot legalize {illegal[0]})" if illegal else ""
        hint = ("; see the diagnostic above — linalg-on-tensors lowers every op binattn "
                "emits") if dialect in ("tosa", "stablehlo") else ""
        raise UserError(f"torch-mlir could not lower the model to {dialect}{what}{hint}") from None
    text = str(mlir_module)
    if "tm_tensor." in text or dialect == "stablehlo":
        # torch-mlir's Python bindings register neither tm_tensor (top-N's topk) nor
        # stablehlo/chlo: the generic op form is what they (and any MLIR tool) parse back
        text = mlir_module.operation.get_asm(print_generic_op_form=True)
    return text


def _with_nonpersistent_buffers(program: torch.export.ExportedProgram
                                ) -> torch.export.ExportedProgram:
    """torch-mlir's importer looks buffers up in ``state_dict`` only; non-persistent ones (HF
    BERT's ``position_ids``) live in ``constants`` — copy them over."""
    for name in program.graph_signature.non_persistent_buffers:
        if name not in program.state_dict and name in program.constants:
            program.state_dict[name] = program.constants[name]
    return program


def reparse(text: str) -> str:
    """Parse MLIR text with torch-mlir's bindings (raises UserError if it does not parse);
    returns the name of the top-level operation."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_dialect

    with ir.Context() as ctx:
        torch_dialect.register_dialect(ctx)
        ctx.allow_unregistered_dialects = True     # tm_tensor is not exposed to Python
        try:
            module = ir.Module.parse(text)
        except Exception as err:  # noqa: BLE001
            raise UserError(
                f"the emitted MLIR does not parse: {str(err).splitlines()[0]}") from None
        return module.operation.name


def bit_op_summary(text: str) -> dict[str, int]:
    """Counts of the ops that show how attention was lowered."""
    names = {"xor": r"arith\.xori|tosa\.bitwise_xor|stablehlo\.xor",
             "and": r"arith\.andi|tosa\.bitwise_and|stablehlo\.and",
             "shift": r"arith\.shr[su]i", "ctpop": r"math\.ctpop",
             "matmul": r"linalg\.(?:batch_)?matmul|tosa\.matmul|stablehlo\.dot_general",
             "torch_xor": r"torch\.aten\.bitwise_xor",
             "torch_matmul": r"torch\.aten\.(?:bmm|matmul)",
             "topk": r"tm_tensor\.(?:topk|sort)|torch\.aten\.(?:topk|sort)\b"}
    return {k: len(re.findall(p, text)) for k, p in names.items()}
