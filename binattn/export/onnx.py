"""Binarized model → ONNX with standard ops only, checked in onnxruntime.

``to_onnx(module, example_inputs, path)``: ``torch.export`` → binattn's ops decomposed into bit
operations (``bitops``: ``BitwiseXor``/``BitwiseAnd``/``BitShift`` SWAR popcount — ONNX has no
popcount — then ``Softmax``/``MatMul`` for P·V) → ``torch.onnx.export(dynamo=True)`` (opset 20,
needs onnxscript) → written atomically. ``check_onnx`` runs the file in onnxruntime (CPU) on the
example inputs and returns the max |difference| from the PyTorch binarized model.

Traps avoided (TVM_NOTES §7): the legacy exporter has no ``bitwise_xor``; a floor-division
shift would go through float and be wrong; ONNX ``BitShift`` is unsigned-only, so the exporter
emulates the arithmetic shift with ``Where``/``BitwiseOr`` — exact.
What it does not: a custom ``BinaryAttention`` ONNX op (plain ORT could not run it).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import UserError
from .._files import atomic_output
from .mlir import export_program

OPSET = 20


def to_onnx(module: torch.nn.Module, example_inputs: tuple, path: Path) -> Path:
    """Write ``module`` (binarized) as ONNX to ``path``; nothing is left at ``path`` on error."""
    program = export_program(module, example_inputs)
    try:
        with atomic_output(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, tuple(example_inputs), dynamo=True,
                                             opset_version=OPSET, verbose=False)
            onnx_program.save(str(tmp))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"ONNX export failed: {type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:300]}") from None
    return Path(path)


def run_onnx(path: Path, example_inputs: tuple) -> list:
    """Outputs of the ONNX file in onnxruntime (CPU) on ``example_inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(example_inputs):
        raise UserError(f"{path}: takes {len(names)} inputs, {len(example_inputs)} given")
    feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, example_inputs)}
    return session.run(None, feeds)


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    flat = []
    for item in out:
        flat.extend(_flat_outputs(item))
    return flat


def check_onnx(path: Path, module: torch.nn.Module, example_inputs: tuple) -> float:
    """Max |ONNX (onnxruntime) − PyTorch| over every floating output of ``module``."""
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()
    with torch.no_grad():
        expected = _flat_outputs(module(*example_inputs))
    got = run_onnx(path, example_inputs)
    if len(got) != len(expected):
        raise UserError(f"ONNX gives {len(got)} outputs, PyTorch {len(expected)}")
    err = 0.0
    for g, e in zip(got, expected):
        if e.dtype.is_floating_point:
            err = max(err, float((torch.as_tensor(g) - e.float()).abs().max()))
        elif not torch.equal(torch.as_tensor(g), e):
            raise UserError("ONNX integer output differs from PyTorch")
    return err
