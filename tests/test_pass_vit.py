"""binarize / inspect / find_sites on binattn's built-in ViT (SDPA and manual attention)."""
from __future__ import annotations

import warnings

import pytest
import torch

import binattn
from binattn.binarize_pass import BinaryAttentionSite, find_sites
from binattn.models import demo_vit
from binattn.ops import AttentionTensors, reference

warnings.filterwarnings("ignore", message=".*reference path.*")


def _reference_vit(model, images, biases=None):
    """The ViT forward with each attention replaced by the reference binary attention."""
    def patched(self, x, _i=[0]):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None if biases is None else biases[_i[0]]
        _i[0] += 1
        out = reference.binary_attention(q, k, v, AttentionTensors(bias=bias))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))
    from binattn.models import tiny_vit
    original = tiny_vit.Attention.forward
    tiny_vit.Attention.forward = patched
    try:
        return model(images)
    finally:
        tiny_vit.Attention.forward = original


@pytest.mark.parametrize("fused", [True, False])
def test_vit_all_sites_rewritten_and_exact(fused):
    torch.manual_seed(0)
    model = demo_vit(depth=2, fused_attn=fused).eval()
    images = model.example_inputs()
    gm = binattn.binarize(model, images, binattn.BinarizeConfig(bias="relpos"))
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == 2 and report.num_skipped == 0
    sites = find_sites(gm)
    assert [s.index for s in sites] == [0, 1]
    assert all(isinstance(s, BinaryAttentionSite) for s in sites)
    assert gm.get_submodule("blocks.1.attn.binattn_site_1") is sites[1]
    assert sites[0].shape == {"B": 2, "Hq": 4, "Hkv": 4, "Nq": 65, "Nk": 65, "D": 16, "Dv": 16}
    assert sites[0].matcher == ("sdpa" if fused else "matmul-softmax")
    assert sites[0].scale == (None if fused else pytest.approx(0.25))
    biases = [gm.get_submodule(f"binattn_bias_{i}")() for i in range(2)]
    with torch.no_grad():
        expected = _reference_vit(model, images[0], biases)
        assert torch.allclose(gm(*images), expected, atol=1e-5)
    names = [n for n, _ in gm.named_parameters()]
    assert "binattn_bias_0.table" in names and "head.weight" in names


def test_float_mode_is_the_original_model():
    model = demo_vit(depth=2).eval()
    images = model.example_inputs()
    gm = binattn.binarize(model, images)
    for site in find_sites(gm):
        site.mode = "float"
    with torch.no_grad():
        assert torch.allclose(gm(*images), model(*images), atol=1e-6)


def test_record_probs_and_training_gradients():
    model = demo_vit(depth=1).eval()
    images = model.example_inputs()
    gm = binattn.binarize(model, images, binattn.BinarizeConfig(bias="relpos"))
    site = find_sites(gm)[0]
    site.record_probs = True
    gm.train()
    gm(*images).sum().backward()
    assert site.last_probs.shape == (2, 4, 65, 65)
    assert torch.allclose(site.last_probs.sum(-1), torch.ones(2, 4, 65))
    assert gm.binattn_bias_0.table.grad.abs().sum() > 0


def test_dynamic_batch_and_reexport_to_op(tmp_path):
    model = demo_vit(depth=1).eval()
    images = model.example_inputs()
    gm = binattn.binarize(model, images)
    assert gm(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    program = torch.export.export(gm, images, strict=False)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.binattn.binary_attention.default in targets
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2")
    with torch.no_grad():
        assert torch.allclose(loaded.module()(*images), gm(*images))


def test_inspect_reports_without_rewriting():
    model = demo_vit(depth=2).eval()
    report = binattn.inspect(model, model.example_inputs())
    assert [r.module_path for r in report.rows] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(r.status == "rewritten" for r in report.rows)
    data = report.to_dict()
    assert data["num_sites"] == 2 and data["sites"][0]["shape"]["Nq"] == 65
    assert "blocks.0.attn" in str(report)


def test_binarize_is_reproducible():
    model = demo_vit(depth=2).eval()
    images = model.example_inputs()
    config = binattn.BinarizeConfig(bias="relpos")
    a, b = (dict(binattn.binarize(model, images, config).named_parameters()) for _ in range(2))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["binattn_bias_0.table"], a["binattn_bias_1.table"])
    other = binattn.binarize(model, images, binattn.BinarizeConfig(bias="relpos", seed=1))
    assert not torch.equal(other.binattn_bias_0.table, a["binattn_bias_0.table"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_binarizes_on_its_device():
    model = demo_vit(depth=2).eval().cuda()
    images = torch.randn(4, 3, 32, 32, device="cuda")
    gm = binattn.binarize(model, (images,), binattn.BinarizeConfig(bias="relpos"))
    assert gm.binattn_bias_0.table.device.type == "cuda"
    with torch.no_grad():
        out = gm(images)
        with binattn.ops.reference_only():
            ref = gm(images)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
    gm.train()
    gm(images).sum().backward()
    assert gm.binattn_bias_0.table.grad.abs().sum() > 0


def test_binarize_copies_by_default_and_shares_on_request():
    """Training the binarized model must not change the FP model (the teacher) by default."""
    model = demo_vit(depth=1).eval()
    gm = binattn.binarize(model, model.example_inputs())
    assert gm.get_parameter("head.weight") is not model.head.weight
    torch.testing.assert_close(gm.get_parameter("head.weight"), model.head.weight)
    with torch.no_grad():
        gm.get_parameter("head.weight").add_(1.0)
    assert not torch.equal(gm.get_parameter("head.weight"), model.head.weight)
    shared = binattn.binarize(model, model.example_inputs(), copy=False)
    assert shared.get_parameter("head.weight") is model.head.weight
