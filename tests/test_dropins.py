"""The drop-ins on small random configs of the real classes: transformers'
``attn_implementation="binattn"`` (BERT, GPT-2, Llama with GQA, Qwen2 with a sliding window) and
the diffusers processor (DiT, SD3, Flux).

Each model's drop-in output is compared with ``binattn.binarize()`` of the same model (both are
binary attention, found two independent ways: the graph pass from the ATen graph, the drop-in
from the library's own attention call) and shown to differ from the float model; masks are
checked by what they must hide (padded, future, out-of-window tokens change nothing), training by
gradients reaching the projections and the learned bias, errors by the argument they name.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import binattn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip("transformers")
import binattn.hf as bhf  # noqa: E402  (registers "binattn")

NONE = {"scale_mode": "none"}   # position-independent scales: causal masks are exact


def _hidden(out) -> torch.Tensor:
    if isinstance(out, dict):
        return out["last_hidden_state"] if "last_hidden_state" in out else out["sample"]
    return out[0]


def _llama(**kw):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="sdpa", **kw)
    torch.manual_seed(0)
    return transformers.LlamaModel(cfg).eval()


def _tokens(batch=2, n=12, vocab=64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=gen)


@pytest.fixture(autouse=True)
def _default_options():
    bhf.register(bhf.BinattnAttentionConfig())
    yield
    bhf.register(bhf.BinattnAttentionConfig())


def test_import_binattn_does_not_import_transformers_or_diffusers():
    code = ("import sys, binattn; bad = [m for m in ('transformers', 'diffusers') "
            "if m in sys.modules]; assert not bad, bad; "
            "assert binattn.hf.NAME == 'binattn' and 'transformers' in sys.modules")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


@pytest.mark.parametrize("scale_mode", ["mean_abs", "none"])
def test_llama_gqa_padding_matches_binarize(scale_mode):
    model = _llama()
    x = _tokens()
    mask = torch.ones_like(x)
    mask[1, :3] = 0                                    # left padding
    float_out = model(x, attention_mask=mask).last_hidden_state
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(scale_mode=scale_mode),
                          example_kwargs={"attention_mask": mask})
    expected = _hidden(gm(x, attention_mask=mask))
    assert bhf.load_binarized(model, gm) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert model.config._attn_implementation == "binattn"
    assert model.layers[0].self_attn.num_key_value_groups == 2      # GQA reached the op
    out = model(x, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 3:], expected[1, 3:], atol=1e-5, rtol=1e-5)
    assert (out - float_out).abs().max() > 1e-2                     # binary, not float


def test_set_attn_implementation_uses_registered_options_and_respects_causality():
    model = _llama()
    model.set_attn_implementation("binattn")
    bhf.register(NONE)
    x = _tokens()
    out = model(x).last_hidden_state
    later = x.clone()
    later[:, 8:] = (later[:, 8:] + 1) % 64
    changed = model(later).last_hidden_state
    torch.testing.assert_close(changed[:, :8], out[:, :8], atol=1e-6, rtol=0)
    assert (changed[:, 8:] - out[:, 8:]).abs().max() > 1e-3
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(scale_mode="none"))
    torch.testing.assert_close(out, _hidden(gm(x)), atol=1e-5, rtol=1e-5)


def test_qwen2_sliding_window_masks_old_tokens():
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   use_sliding_window=True, sliding_window=3, max_window_layers=0,
                                   layer_types=["sliding_attention"])
    torch.manual_seed(0)
    model = transformers.Qwen2Model(cfg).eval()
    model.set_attn_implementation("binattn")
    bhf.attach(model, NONE)
    x = _tokens(n=10)
    out = model(x).last_hidden_state
    first = x.clone()
    first[:, 0] = (first[:, 0] + 1) % 64
    changed = model(first).last_hidden_state
    assert (changed[:, 1:3] - out[:, 1:3]).abs().max() > 1e-3      # inside the window
    torch.testing.assert_close(changed[:, 3:], out[:, 3:], atol=1e-6, rtol=0)  # outside


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_padding_does_not_reach_real_tokens(arch):
    # "none": with "mean_abs" the per-(b, h) scale averages |k| over every key, padded ones too
    bhf.register(NONE)
    torch.manual_seed(0)
    if arch == "bert":
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=96,
                                      max_position_embeddings=32, attn_implementation="binattn")
        model = transformers.BertModel(cfg).eval()
    else:
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4,
                                      n_positions=32, attn_implementation="binattn")
        model = transformers.GPT2Model(cfg).eval()
    assert model.config._attn_implementation == "binattn"
    x = _tokens(n=10)
    mask = torch.ones_like(x)
    pad = slice(7, None) if arch == "bert" else slice(None, 3)   # right / left padding
    real = slice(None, 7) if arch == "bert" else slice(3, None)
    mask[0, pad] = 0
    out = model(x, attention_mask=mask).last_hidden_state
    other = x.clone()
    other[0, pad] = (other[0, pad] + 5) % 64
    changed = model(other, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(changed[0, real], out[0, real], atol=1e-6, rtol=0)
    unmasked = model(other).last_hidden_state
    assert (unmasked[0, real] - out[0, real]).abs().max() > 1e-3   # the mask is what hid them


@pytest.mark.parametrize("bias", ["head", "relpos_1d"])
def test_bert_matches_binarize_with_padding(bias):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=96,
                                  max_position_embeddings=32, attn_implementation="sdpa")
    model = transformers.BertModel(cfg).eval()
    x = _tokens(n=10)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(bias=bias, relpos_distance=3),
                          example_kwargs={"attention_mask": mask})
    with torch.no_grad():                       # a trained bias, as load_binarized must copy
        for name, p in gm.named_parameters():
            if "binattn_bias" in name:
                p.copy_(torch.randn_like(p))
    expected = _hidden(gm(x, attention_mask=mask))
    bhf.load_binarized(model, gm)
    out = model(x, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :6], expected[1, :6], atol=1e-5, rtol=1e-5)


def _static_llama():
    """A Llama binarized with static (calibrated) scales and a learned per-head bias."""
    model = _llama()
    x = _tokens()
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(bias="head"))
    from binattn.binarize_pass import find_sites
    gen = torch.Generator().manual_seed(3)
    for site in find_sites(gm):
        site.scale_mode = "static"
        site.q_scale = torch.rand(4, 1, 1, generator=gen) + 0.5
        site.k_scale = torch.rand(2, 1, 1, generator=gen) + 0.5
    with torch.no_grad():
        for name, p in gm.named_parameters():
            if "binattn_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    return model, gm, x


def test_checkpoint_state_loads_and_round_trips_through_from_pretrained(tmp_path):
    model, gm, x = _static_llama()
    expected = _hidden(gm(x))
    bhf.load_binarized(model, gm)
    state = model.layers[0].self_attn.binattn
    assert state.options.scale_mode == "static" and state.q_scale.shape == (4, 1, 1)
    out = model(x).last_hidden_state
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="binattn")
    assert loaded.config._attn_implementation == "binattn"
    with pytest.raises(ValueError, match="binattn.hf.attach"):   # state not yet attached
        loaded(x)
    bhf.attach(loaded, checkpoint=tmp_path)
    torch.testing.assert_close(loaded.eval()(x).last_hidden_state, out, atol=1e-6, rtol=0)


def test_options_only_config_loads_with_from_pretrained(tmp_path):
    model = _llama()
    bhf.attach(model, {"scale_mode": "none", "top_n": 4})
    x = _tokens()
    out = model(x).last_hidden_state
    for state in (model.layers[0].self_attn.binattn, model.layers[1].self_attn.binattn):
        assert state.options.top_n == 4
    del model.config.binattn["layers"]              # options only: no per-layer tensors
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="binattn")
    torch.testing.assert_close(loaded.eval()(x).last_hidden_state, out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bias", ["head", "relpos_1d"])
def test_hf_training_step_reaches_projections_and_bias(bias, tmp_path):
    model = _llama(attention_dropout=0.0)
    bhf.attach(model, {"bias": bias})
    model.train()
    x = _tokens()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(x).last_hidden_state.pow(2).mean()
    loss.backward()
    attn = model.layers[0].self_attn
    for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
              attn.binattn.bias.table):
        assert p.grad is not None and p.grad.abs().sum() > 0
    before = attn.binattn.bias.table.detach().clone()
    opt.step()
    assert not torch.equal(before, attn.binattn.bias.table)
    model.eval()                                 # the trained bias saves and loads back
    out = model(x).last_hidden_state
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path, attn_implementation="binattn")
    bhf.attach(loaded, checkpoint=tmp_path)
    torch.testing.assert_close(loaded.eval()(x).last_hidden_state, out, atol=1e-6, rtol=0)


def test_hf_attention_dropout_applies_in_training_only():
    model = _llama(attention_dropout=0.5)
    bhf.attach(model, NONE)
    x = _tokens()
    model.train()
    a, b = model(x).last_hidden_state, model(x).last_hidden_state
    assert (a - b).abs().max() > 1e-3                      # dropout ran
    a.pow(2).mean().backward()
    assert model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model(x).last_hidden_state, model(x).last_hidden_state)
    bhf.attach(model, {"scale_mode": "none", "dropout": "ignore"})
    model.train()
    torch.testing.assert_close(model(x).last_hidden_state, model(x).last_hidden_state)


def test_hf_errors_name_the_argument():
    with pytest.raises(ValueError, match="unsupported binattn option.*'mode'"):
        bhf.register({"mode": "float"})
    with pytest.raises(ValueError, match="pv_bits"):
        bhf.BinattnAttentionConfig(pv_bits=4)
    with pytest.raises(ValueError, match="dropout"):
        bhf.BinattnAttentionConfig(dropout="sometimes")
    with pytest.raises(ValueError, match="bias must be one of.*'head'.*load_binarized"):
        bhf.BinattnAttentionConfig(bias="relpos")
    model = _llama()
    attn = model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="soft_cap must be"):
        bhf.binattn_attention_forward(attn, q, kv, kv, None, softcap=-1.0)
    with pytest.raises(ValueError, match="sinks"):
        bhf.binattn_attention_forward(attn, q, kv, kv, None, s_aux=torch.zeros(3))
    bhf.attach(model, {"scale_mode": "static"})
    with pytest.raises(ValueError, match="static.*q_scale"):
        model(_tokens())
    bhf.attach(model, {"pv_bits": 8})
    with pytest.raises(ValueError, match="dropout.*pv_bits=8"):
        bhf.binattn_attention_forward(attn, q, kv, kv, None, dropout=0.1)
    with pytest.raises(ValueError, match="not an attention module"):
        _, gm, _ = _static_llama()
        bhf.load_binarized(transformers.BertModel(transformers.BertConfig(
            vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=96)), gm)


# ----- diffusers -----------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")
import binattn.diffusers as bdf  # noqa: E402


def _dit():
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
        norm_num_groups=1).eval()
    gen = torch.Generator().manual_seed(1)
    args = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=gen),
                timestep=torch.tensor([1, 5]), class_labels=torch.tensor([0, 3]))
    return model, args


def _sd3():
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16).eval()
    gen = torch.Generator().manual_seed(1)
    args = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(2, 5, 16, generator=gen),
                pooled_projections=torch.randn(2, 8, generator=gen),
                timestep=torch.tensor([1, 2]))
    return model, args


def _flux():
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        axes_dims_rope=(4, 6, 6)).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                     indexing="ij")).reshape(3, 16).T
    args = dict(hidden_states=torch.randn(2, 16, 4, generator=gen),
                encoder_hidden_states=torch.randn(2, 5, 16, generator=gen),
                pooled_projections=torch.randn(2, 8, generator=gen),
                timestep=torch.tensor([1.0, 2.0]), img_ids=ids, txt_ids=torch.zeros(5, 3))
    return model, args


MODELS = {"dit": (_dit, 2), "sd3": (_sd3, 2), "flux": (_flux, 2)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_diffusers_processor_matches_binarize(name):
    make, sites = MODELS[name]
    model, args = make()
    float_out = _hidden(model(**args))
    gm = binattn.binarize(model, (), example_kwargs=args)
    report = gm.meta["binattn_report"]
    assert sum(r.rewritten for r in report.rows) == sites, report
    expected = _hidden(gm(**args))
    bdf.apply(model)
    procs = [m.processor for m in bdf.attention_layers(model).values()]
    assert len(procs) == sites and all(isinstance(p, bdf.BinattnAttnProcessor) for p in procs)
    out = _hidden(model(**args))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - float_out).abs().max() > 1e-3
    bdf.remove(model)
    torch.testing.assert_close(_hidden(model(**args)), float_out)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_set_attn_processor_with_one_shared_processor(name):
    model, args = MODELS[name][0]()
    bdf.apply(model)
    expected = _hidden(model(**args))
    model.set_attn_processor(bdf.BinattnAttnProcessor())        # base-less: each default
    torch.testing.assert_close(_hidden(model(**args)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, bias", [("dit", "head"), ("flux", "head"),
                                        ("flux", "relpos_1d")])
def test_diffusers_training_step(name, bias):
    model, args = MODELS[name][0]()
    bdf.apply(model, {"bias": bias})
    model.train()
    loss = _hidden(model(**args)).pow(2).mean()
    loss.backward()
    attn = next(iter(bdf.attention_layers(model).values()))
    for p in (attn.to_q.weight, attn.to_k.weight, attn.processor.binattn.bias.table):
        assert p.grad is not None and p.grad.abs().sum() > 0
    keys = [k for k in model.state_dict() if ".processor.binattn.bias.table" in k]
    assert len(keys) == MODELS[name][1]                       # saved with the model


def test_diffusers_errors_name_the_problem():
    from diffusers.models.attention_processor import AttnProcessor
    model, args = _dit()
    for attn in bdf.attention_layers(model).values():
        attn.set_processor(bdf.BinattnAttnProcessor(base=AttnProcessor()))   # no SDPA
    with pytest.raises(RuntimeError, match="AttnProcessor made no scaled_dot_product"):
        model(**args)
    with pytest.raises(ValueError, match="unsupported binattn option.*'top_k'"):
        bdf.apply(model, {"top_k": 3})
    with pytest.raises(ValueError, match="bias='head' needs num_heads"):
        bdf.BinattnAttnProcessor({"bias": "head"})
    with pytest.raises(ValueError, match="no diffusers attention module"):
        bdf.apply(torch.nn.Linear(2, 2))
    flux, fargs = _flux()
    bdf.apply(flux)
    proc = flux.transformer_blocks[0].attn.processor
    proc.base._attention_backend = "flash"
    with pytest.raises(ValueError, match="'native' backend"):
        flux(**fargs)


def test_hf_softcap_and_sinks_reach_the_op():
    """Gemma-2's ``softcap`` and GPT-OSS's ``s_aux`` sinks go to the op (its ``soft_cap`` option
    and ``sinks`` tensor): the drop-in's output is the op's with them."""
    model = _llama()
    attn = model.layers[0].self_attn
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    sinks = torch.randn(4)
    got, _ = bhf.binattn_attention_forward(attn, q, k, v, None, scaling=0.25, softcap=2.0,
                                           s_aux=sinks, is_causal=False)
    want = binattn.ops.binary_attention(q, k, v, scale=0.25, soft_cap=2.0, sinks=sinks)
    torch.testing.assert_close(got, want.transpose(1, 2))
    plain, _ = bhf.binattn_attention_forward(attn, q, k, v, None, scaling=0.25, is_causal=False)
    assert not torch.allclose(got, plain)


def _wan():
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32).eval()
    gen = torch.Generator().manual_seed(1)
    args = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=gen),
                timestep=torch.tensor([5]), encoder_hidden_states=torch.randn(1, 6, 16,
                                                                             generator=gen))
    return model, args


def _hunyuan_video():
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)).eval()
    gen = torch.Generator().manual_seed(1)
    args = dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=gen),
                timestep=torch.tensor([5]), encoder_hidden_states=torch.randn(1, 6, 16,
                                                                             generator=gen),
                encoder_attention_mask=torch.ones(1, 6, dtype=torch.long),
                pooled_projections=torch.randn(1, 8, generator=gen),
                guidance=torch.tensor([3.0]))
    return model, args


def test_wan_processor_gets_its_positional_rotary_embedding():
    """Wan's attention passes its processor ``rotary_emb`` positionally: it must reach Wan's own
    processor as such, through ``apply`` and through one shared processor alike."""
    model, args = _wan()
    float_out = _hidden(model(**args))
    bdf.apply(model)
    out = _hidden(model(**args))
    assert (out - float_out).abs().max() > 1e-3
    model.set_attn_processor(bdf.BinattnAttnProcessor())   # Wan's class names its default
    torch.testing.assert_close(_hidden(model(**args)), out, atol=1e-6, rtol=0)


def test_a_shared_processor_refuses_to_guess_a_custom_processor_away():
    """HunyuanVideo builds its layers with its own processor: a base-less shared processor
    cannot know it, so it stops with a message pointing at ``apply`` (which wraps it)."""
    model, args = _hunyuan_video()
    float_out = _hidden(model(**args))
    bdf.apply(model)
    assert (_hidden(model(**args)) - float_out).abs().max() > 1e-3
    bdf.remove(model)
    model.set_attn_processor(bdf.BinattnAttnProcessor())
    with pytest.raises(ValueError, match=r"rotary embeddings.*binattn\.diffusers\.apply"):
        model(**args)
