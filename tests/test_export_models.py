"""`binattn export` on the built-in ViT from the CLI (MLIR, MLIR run, ONNX) and its errors."""
import onnx
import pytest
import torch
from click.testing import CliRunner

from binattn.cli import main
from binattn.export import mlir
from binattn.models import demo_vit


@pytest.fixture(scope="module")
def demo_pt2(tmp_path_factory):
    torch.manual_seed(0)
    model = demo_vit().eval()
    path = tmp_path_factory.mktemp("export") / "demo.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), str(path))
    return path


def test_export_mlir_demo_model(tmp_path, demo_pt2):
    out = tmp_path / "demo.mlir"
    result = CliRunner().invoke(main, ["export", str(demo_pt2), "--format", "mlir", "-o", str(out),
                                       "--top-n", "16"])
    assert result.exit_code == 0, result.output
    assert "re-parsed with torch-mlir: OK" in result.output
    text = out.read_text()
    assert mlir.reparse(text) == "builtin.module"
    ops = mlir.bit_op_summary(text)
    assert ops["xor"] >= 4 and ops["topk"] >= 4                       # 4 sites, top-N each
    float_text = mlir.to_mlir(demo_vit().eval(), (torch.randn(1, 3, 32, 32),))
    # each of the 4 sites lost its QKᵀ matmul; P·V and the Linear layers remain
    assert mlir.bit_op_summary(float_text)["matmul"] - ops["matmul"] == 4


def test_export_mlir_demo_model_runs(tmp_path, demo_pt2):
    out = tmp_path / "demo_run.mlir"
    result = CliRunner().invoke(main, ["export", str(demo_pt2), "--format", "mlir", "-o", str(out),
                                       "--run"])
    assert result.exit_code == 0, result.output
    err = float(result.output.split("max |MLIR − PyTorch| =")[1].split()[0])
    assert err <= 1e-5


def test_export_onnx_demo_model(tmp_path, demo_pt2):
    out = tmp_path / "demo.onnx"
    result = CliRunner().invoke(main, ["export", str(demo_pt2), "--format", "onnx", "-o", str(out),
                                       "--pv-bits", "8"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs PyTorch" in result.output
    err = float(result.output.split("max |err| =")[1].split()[0])
    assert err <= 1e-4
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"BitwiseXor", "BitShift"} <= ops


@pytest.mark.parametrize("args, message", [
    (["missing.pt2", "--format", "onnx"], "no such file"),
    (["{demo}", "--format", "mlir", "--input-shape", "1,x"], "comma-separated ints"),
    (["{demo}", "--format", "onnx", "--top-n", "0"], "--top-n must be >= 1"),
    (["{demo}", "--format", "onnx", "--run"], "--run needs --format mlir"),
])
def test_export_errors(tmp_path, demo_pt2, args, message):
    out = tmp_path / "out.file"
    args = [a.replace("{demo}", str(demo_pt2)) for a in args]
    result = CliRunner().invoke(main, ["export", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
