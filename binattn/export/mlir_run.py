"""Run emitted linalg-on-tensors MLIR on the CPU and compare it with PyTorch.

``run_linalg(text, inputs, like)`` parses the text, lowers it to LLVM with torch-mlir's own
RefBackend passes (bufferize, linalg → loops → LLVM) and calls ``main`` through MLIR's
``ExecutionEngine`` with C-interface memref descriptors. It proves that the exported bit ops
compute the model, not only that the text parses.

What it does not: modules whose ``main`` returns several results, non-float32 results, or
top-N modules (their ``tm_tensor`` ops are written in generic form, which the torch-mlir
Python bindings cannot lower) — ``runnable`` says why.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np
import torch

from ..errors import UserError

PIPELINE = "builtin.module(" + ",".join([
    "func.func(refback-generalize-tensor-pad)", "func.func(refback-generalize-tensor-concat)",
    "func.func(linalg-generalize-named-ops)", "func.func(linalg-fuse-elementwise-ops)",
    "convert-shape-to-std", "func.func(tm-tensor-bufferize)",
    "one-shot-bufferize{copy-before-write bufferize-function-boundaries "
    "function-boundary-type-conversion=identity-layout-map}",
    "refback-mlprogram-bufferize", "func.func(tm-tensor-to-loops)",
    "func.func(refback-munge-memref-copy)", "func.func(convert-linalg-to-loops)",
    "func.func(lower-affine)", "convert-scf-to-cf", "func.func(refback-expand-ops-for-llvm)",
    "func.func(arith-expand)", "func.func(convert-math-to-llvm)", "convert-math-to-libm",
    "expand-strided-metadata", "finalize-memref-to-llvm", "lower-affine",
    "convert-bufferization-to-memref", "finalize-memref-to-llvm",
    "func.func(convert-arith-to-llvm)", "convert-vector-to-llvm", "convert-func-to-llvm",
    "convert-cf-to-llvm", "convert-complex-to-llvm", "reconcile-unrealized-casts"]) + ")"


def runnable(text: str, expected: object) -> Optional[str]:
    """None if :func:`run_linalg` can run this module, else the reason it cannot."""
    if "tm_tensor." in text:
        return "top-N lowers to tm_tensor ops the Python bindings cannot lower"
    if not isinstance(expected, torch.Tensor):
        return "main returns several results"
    if expected.dtype != torch.float32:
        return f"main returns {expected.dtype}"
    return None


def run_linalg(text: str, inputs: tuple, like: torch.Tensor) -> np.ndarray:
    """Execute ``main`` of a linalg-on-tensors module on ``inputs``; its one float32 result."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_dialect
    from torch_mlir.execution_engine import ExecutionEngine
    from torch_mlir.passmanager import PassManager
    from torch_mlir.runtime import np_to_memref as memref

    with ir.Context() as ctx:
        torch_dialect.register_dialect(ctx)
        module = ir.Module.parse(text)
        for op in module.body.operations:
            if op.operation.name == "func.func":
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
        try:
            PassManager.parse(PIPELINE).run(module.operation)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"cannot lower the MLIR to LLVM: {str(err).splitlines()[0]}") from None
        engine = ExecutionEngine(module, opt_level=2)
        arrays = [np.ascontiguousarray(x.detach().cpu().numpy()) for x in inputs]
        args = [ctypes.pointer(ctypes.pointer(memref.get_ranked_memref_descriptor(a)))
                for a in arrays]
        result = memref.make_nd_memref_descriptor(like.dim(), ctypes.c_float)()
        engine.invoke("main", ctypes.pointer(ctypes.pointer(result)), *args)
        return np.array(memref.ranked_memref_to_numpy([result]), copy=True)


def compare(text: str, module: torch.nn.Module, inputs: tuple) -> tuple[Optional[float], str]:
    """``(max |MLIR − PyTorch|, "")``, or ``(None, reason)`` when the module cannot run."""
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()
    with torch.no_grad():
        expected = module(*inputs)
    reason = runnable(text, expected)
    if reason:
        return None, reason
    got = run_linalg(text, inputs, expected)
    if got.shape != tuple(expected.shape):
        raise UserError(f"MLIR result has shape {got.shape}, PyTorch {tuple(expected.shape)}")
    return float(np.abs(got - expected.numpy()).max()), ""
