"""binattn.export: a binarized model as MLIR (torch-mlir) or ONNX, with binary attention lowered
to integer bit operations (sign packing, XOR, SWAR popcount) instead of a float QKᵀ matmul.

``to_mlir(gm, inputs, dialect)`` / ``reparse(text)`` / ``bit_op_summary(text)`` (``mlir``);
``to_onnx(gm, inputs, path)`` / ``check_onnx(path, gm, inputs)`` (``onnx``); the decomposition
itself is ``bitops.binary_attention_bitops``. Exporters are imported lazily (torch-mlir, onnx
are the ``export`` extra). ``.pt2`` export is ``binattn convert``. See docs/export.md.
"""
from .bitops import binary_attention_bitops, decompose, decomposition_table

__all__ = ["binary_attention_bitops", "decompose", "decomposition_table"]
