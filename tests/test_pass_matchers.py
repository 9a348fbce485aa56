"""The matchers on every attention shape they claim: each form is rewritten with its scale,
mask and causality carried exactly (allclose to binattn.ops.binary_attention by hand), and the
forms that cannot be rewritten safely are skipped with the reason."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import binattn
from binattn.binarize_pass import BinarizeConfig, binarize, find_sites, inspect

warnings.filterwarnings("ignore", message=".*reference path.*")

B, H, N, D = 2, 3, 6, 8


def qkv(n_q: int = N, n_k: int = N, heads: int = H, kv_heads: int = H, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, heads, n_q, D, generator=g),
            torch.randn(B, kv_heads, n_k, D, generator=g),
            torch.randn(B, kv_heads, n_k, D, generator=g))


class Fn(torch.nn.Module):
    """Wraps an attention function of (q, k, v, *extra) so it can be exported."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def check(fn, inputs, expected, n_sites=1, config=None):
    gm = binarize(Fn(fn), inputs, config)
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == n_sites and report.num_skipped == 0, str(report)
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), expected, atol=1e-5, rtol=1e-4)
    return gm


def bin_attn(q, k, v, **kw):
    return binattn.ops.binary_attention(q, k, v, **kw)


# --- decomposed forms -------------------------------------------------------------------

def test_matmul_mul_scale():
    q, k, v = qkv()
    gm = check(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1) @ v,
               (q, k, v), bin_attn(q, k, v, scale=0.3))
    assert find_sites(gm)[0].scale == pytest.approx(0.3)


def test_div_by_sqrt_d_and_permuted_k():
    q, k, v = qkv()
    def fn(q, k, v):
        return (torch.matmul(q, k.permute(0, 1, 3, 2)) / math.sqrt(D)).softmax(-1) @ v

    check(fn, (q, k, v), bin_attn(q, k, v))


def test_prescaled_q_and_k():
    q, k, v = qkv()
    def fn(q, k, v):
        return F.softmax((q * 0.5) @ (k * 0.25).transpose(-1, -2), dim=-1) @ v

    gm = check(fn, (q, k, v), bin_attn(q, k, v, scale=0.125))
    assert find_sites(gm)[0].scale == pytest.approx(0.125)


def test_no_scale_means_scale_one():
    q, k, v = qkv()
    check(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, (q, k, v),
          bin_attn(q, k, v, scale=1.0))


def test_k_given_already_transposed():
    q, k, v = qkv()
    kt = k.transpose(-2, -1).contiguous()
    check(lambda q, kt, v: torch.softmax(q @ kt * 0.2, -1) @ v, (q, kt, v),
          bin_attn(q, k, v, scale=0.2))


def test_additive_float_mask():
    q, k, v = qkv()
    mask = torch.randn(B, 1, N, N)
    fn = lambda q, k, v, m: torch.softmax(q @ k.transpose(-2, -1) * 0.3 + m, -1) @ v  # noqa: E731
    check(fn, (q, k, v, mask), bin_attn(q, k, v, scale=0.3, attn_mask=mask))


def test_masked_fill_minus_inf_and_where_causal():
    q, k, v = qkv()
    pad = torch.zeros(B, 1, 1, N, dtype=torch.bool)
    pad[1, ..., -2:] = True
    causal = torch.ones(N, N, dtype=torch.bool).tril()

    def fn(q, k, v, pad, causal):
        s = (q @ k.transpose(-2, -1)) * 0.3
        s = s.masked_fill(pad, float("-inf"))
        s = torch.where(causal, s, torch.finfo(s.dtype).min)
        return torch.softmax(s, -1) @ v

    keep = ~pad & causal
    check(fn, (q, k, v, pad, causal), bin_attn(q, k, v, scale=0.3, attn_mask=keep))


def test_fp32_softmax_then_cast():
    q, k, v = (x.to(torch.bfloat16) for x in qkv())

    def fn(q, k, v):
        s = (q @ k.transpose(-2, -1)) * 0.3
        return torch.softmax(s, -1, dtype=torch.float32).to(q.dtype) @ v

    check(fn, (q, k, v), bin_attn(q, k, v, scale=0.3))


def test_three_d_bmm_with_baddbmm_mask():
    q, k, v = (x.reshape(B * H, N, D) for x in qkv())
    mask = torch.randn(B * H, N, N)

    def fn(q, k, v, m):
        return torch.bmm(torch.softmax(torch.baddbmm(m, q * 0.3, k.transpose(1, 2)), -1), v)

    gm = check(fn, (q, k, v, mask), bin_attn(q, k, v, scale=0.3, attn_mask=mask))
    assert find_sites(gm)[0].shape["Hq"] == 1


def test_eval_dropout_is_dropped_train_dropout_is_skipped():
    q, k, v = qkv()

    class Drop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.1)

        def forward(self, q, k, v):
            return self.drop(torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1)) @ v

    module = Drop().eval()
    gm = binarize(module, (q, k, v))
    assert gm.meta["binattn_report"].num_rewritten == 1
    report = inspect(Drop().train(), (q, k, v))
    assert report.num_rewritten == 0
    assert any("training mode" in note for note in report.notes)
    assert report.rows[0].status.startswith("skipped: attention dropout p=0.1 is active")


def test_scale_after_mask_is_skipped():
    q, k, v = qkv()
    mask = torch.randn(1, 1, N, N)
    def fn(q, k, v, m):
        return torch.softmax((q @ k.transpose(-2, -1) + m) * 0.3, -1) @ v

    report = inspect(Fn(fn), (q, k, v, mask))
    assert report.rows[0].status == "skipped: the scores are scaled after a mask is added"


def test_masked_fill_with_small_value_is_skipped():
    q, k, v = qkv()
    m = torch.rand(1, 1, N, N) > 0.5
    report = inspect(Fn(lambda q, k, v, m: torch.softmax(
        (q @ k.transpose(-2, -1)).masked_fill(m, -5.0), -1) @ v), (q, k, v, m))
    assert "masked_fill with value -5.0" in report.rows[0].status


def test_per_head_tensor_scale_is_folded_into_q_other_tensor_scales_are_skipped():
    """``s · t`` with t one value per head (SwinV2's logit scale) is ``(q · t) · kᵀ``: binary
    attention of q · t (sign(q) with q's magnitude scale times t); a t over keys is a skip."""
    q, k, v = qkv()
    t = torch.rand(1, H, 1, 1) + 0.5
    fn = lambda q, k, v, t: torch.softmax(q @ k.transpose(-2, -1) * t, -1) @ v  # noqa: E731
    gm = check(fn, (q, k, v, t), bin_attn(q * t, k, v, scale=1.0))
    assert "folded into q" in gm.meta["binattn_report"].rows[0].notes[0]
    t_keys = torch.rand(1, H, 1, N)
    report = inspect(Fn(fn), (q, k, v, t_keys))
    assert report.rows[0].status == (
        "skipped: the scores are scaled by a tensor that is not a constant and varies over "
        f"queries or keys ([1x{H}x1x{N}]; one per head is supported)")


def test_softmax_that_is_not_attention_is_ignored():
    x = torch.randn(2, 5, 7)
    report = inspect(Fn(lambda x: torch.softmax(x, -1) @ torch.ones(7, 3)), (x,))
    assert report.rows == [] and "no attention found" in report.summary


# --- SDPA -------------------------------------------------------------------------------

def test_sdpa_causal_scale_mask_gqa():
    q, k, v = qkv(n_q=5, n_k=7, heads=6, kv_heads=2)
    mask = torch.rand(B, 1, 5, 7) > 0.3
    mask[..., 0] = True
    def fn(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.2, enable_gqa=True)

    gm = check(fn, (q, k, v, mask), bin_attn(q, k, v, attn_mask=mask, scale=0.2))
    site = find_sites(gm)[0]
    assert (site.shape["Hq"], site.shape["Hkv"], site.shape["Nq"], site.shape["Nk"]) == (6, 2, 5, 7)
    q, k, v = qkv(n_q=5, n_k=7)
    gm = check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
               (q, k, v), bin_attn(q, k, v, is_causal=True))
    assert find_sites(gm)[0].is_causal


def test_sdpa_dropout_in_training_is_skipped():
    q, k, v = qkv()
    report = inspect(Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)),
                     (q, k, v))
    assert report.rows[0].status.startswith("skipped: dropout_p=0.1")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_q=st.integers(1, 9), n_k=st.integers(1, 9), d=st.sampled_from([3, 8, 33]),
       causal=st.booleans(), scale=st.one_of(st.none(), st.floats(0.05, 2.0)),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_sdpa_options_carried_exactly(n_q, n_k, d, causal, scale, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) for n in (n_q, n_k, n_k))
    mask = (torch.rand(1, 1, n_q, n_k, generator=g) > 0.4) if masked else None
    if mask is not None:
        mask[..., 0] = True
    inputs = (q, k, v) + ((mask,) if masked else ())

    def fn(q, k, v, m=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=scale)

    if causal and masked:
        return  # SDPA itself rejects attn_mask together with is_causal
    gm = binarize(Fn(fn), inputs, BinarizeConfig(dynamic_batch=False))
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), bin_attn(q, k, v, attn_mask=mask, is_causal=causal,
                                                         scale=scale), atol=1e-5, rtol=1e-4)


# --- options, biases, filter ------------------------------------------------------------

def test_filter_fn_and_site_options():
    q, k, v = qkv()

    def two(q, k, v):
        a = F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(a, k, v)

    gm = binarize(Fn(two), (q, k, v), BinarizeConfig(top_n=3, binarizer="tanh"),
                  filter_fn=lambda row: row.index == 1)
    rows = gm.meta["binattn_report"].rows
    assert [r.status for r in rows] == ["skipped: excluded by filter_fn", "rewritten"]
    site = find_sites(gm)[0]
    assert (site.index, site.top_n, site.binarizer) == (1, 3, "tanh")
    a = F.scaled_dot_product_attention(q, k, v)
    with torch.no_grad():
        torch.testing.assert_close(gm(q, k, v), bin_attn(a, k, v, top_n=3, binarizer="tanh"))


@pytest.mark.parametrize("kind, shape", [("dense", (H, N, N)), ("head", (H, 1, 1))])
def test_dense_and_head_biases(kind, shape):
    q, k, v = qkv()
    gm = binarize(Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), (q, k, v),
                  BinarizeConfig(bias=kind))
    table = gm.get_submodule("binattn_bias_0").table
    assert tuple(table.shape) == shape
    with torch.no_grad():
        table.normal_()
        torch.testing.assert_close(gm(q, k, v), bin_attn(q, k, v, bias=table.expand(H, N, N)))


class SDPA(torch.nn.Module):
    """Named inputs (export's dynamic shapes map onto them; ``Fn`` takes ``*args``)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def _offset_bias(table: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """[H, Nq, Nk] by hand: key j from query i at offset j − i − (Nk − Nq), clipped to ±R."""
    radius = (table.shape[0] - 1) // 2
    out = torch.empty(table.shape[1], n_q, n_k)
    for i in range(n_q):
        for j in range(n_k):
            offset = max(-radius, min(radius, j - i - (n_k - n_q)))
            out[:, i, j] = table[offset + radius]
    return out


@pytest.mark.parametrize("n_q, n_k", [(N, N), (3, 7)])
def test_relpos_1d_bias_follows_the_sequence_length(n_q, n_k):
    """A 1-D relative-position table gathered at each call's own lengths (a graph with a
    dynamic sequence length keeps working at lengths never seen), queries aligned to the last
    keys; its gradient reaches the table."""
    q, k, v = qkv(n_q, n_k)
    seq_q = torch.export.Dim("nq", min=2, max=64)
    seq_k = seq_q if n_q == n_k else torch.export.Dim("nk", min=2, max=64)
    gm = binarize(SDPA(), (q, k, v), BinarizeConfig(bias="relpos_1d", relpos_distance=2),
                  dynamic_shapes=({2: seq_q}, {2: seq_k}, {2: seq_k}))
    assert gm.meta["binattn_report"].rows[0].bias == "relpos_1d ±2"
    table = gm.get_submodule("binattn_bias_0").table
    assert tuple(table.shape) == (5, H) and not table.any()   # zero init: the model unchanged
    with torch.no_grad():
        table.normal_()
    for grow in (0, 5):
        q, k, v = qkv(n_q + grow, n_k + grow, seed=grow)
        with torch.no_grad():
            expected = bin_attn(q, k, v, bias=_offset_bias(table, n_q + grow, n_k + grow))
            torch.testing.assert_close(gm(q, k, v), expected)
    gm(q, k, v).square().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_relpos_fallback_is_reported():
    q, k, v = qkv()
    fn = Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    gm = binarize(fn, (q, k, v), BinarizeConfig(bias="relpos", bias_fallback="head"))
    assert gm.meta["binattn_report"].rows[0].bias == \
        "head (relpos: no token grid known (set BinarizeConfig.grid))"
    gm = binarize(fn, (q, k, v), BinarizeConfig(bias="relpos", grid=(1, 5)))
    assert gm.meta["binattn_report"].rows[0].bias == "relpos 1×5+1"
    gm = binarize(fn, (q, k, v), BinarizeConfig(bias="relpos", grid=(3, 3), bias_fallback=None))
    assert "none (relpos: config grid 3×3" in gm.meta["binattn_report"].rows[0].bias


def test_bad_config_names_the_option():
    with pytest.raises(ValueError, match="bias must be one of"):
        BinarizeConfig(bias="rel")
    with pytest.raises(ValueError, match="relpos_distance must be an int >= 1"):
        BinarizeConfig(bias="relpos_1d", relpos_distance=0)
    with pytest.raises(ValueError, match="bias_fallback must be one of"):
        BinarizeConfig(bias="relpos", bias_fallback="relpos")
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        BinarizeConfig(grid=(0, 3))
    with pytest.raises(ValueError, match="top_n"):
        BinarizeConfig(top_n=0)


def test_div_by_full_tensor_constant():
    q, k, v = qkv()

    def fn(q, k, v):
        s = q @ k.transpose(-1, -2)
        s = s / torch.full([], v.size(-1) ** 0.5, dtype=s.dtype, device=s.device)
        return torch.softmax(s, -1) @ v

    gm = check(fn, (q, k, v), bin_attn(q, k, v))
    assert find_sites(gm)[0].scale == pytest.approx(D ** -0.5)


def test_fused_fast_path_ops_are_reported_skipped():
    """Without binattn's decompositions (e.g. another aot_autograd backend) torch's fused
    encoder-layer op hides its attention: reported, never silently left out."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    from binattn.binarize_pass import analyze

    graphs = []

    def keep(gm, _inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(encoder, backend=aot_autograd(fw_compiler=keep))(torch.randn(2, 7, 32))
    torch._dynamo.reset()
    rows = analyze(graphs[0], "graph")[1].rows
    assert len(rows) == 2 and all(r.matcher == "torch-fastpath" for r in rows)
    assert rows[0].status.startswith("skipped: torch's fused fast path")
    assert (rows[0].shape["Hq"], rows[0].shape["Nq"], rows[0].shape["D"]) == (4, 7, 8)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(three_d=st.booleans(), scale_style=st.sampled_from(["mul", "div", "pre_q", "none"]),
       mask_kind=st.sampled_from(["none", "additive", "masked_fill", "where"]),
       n_q=st.integers(1, 7), n_k=st.integers(2, 7), d=st.sampled_from([4, 16, 40]),
       seed=st.integers(0, 2**16))
def test_decomposed_forms_carried_exactly(three_d, scale_style, mask_kind, n_q, n_k, d, seed):
    g = torch.Generator().manual_seed(seed)
    lead = (4,) if three_d else (2, 2)
    q, k, v = (torch.randn(*lead, n, d, generator=g) for n in (n_q, n_k, n_k))
    c = 0.37
    drop = torch.rand(*lead[:-1], 1, n_q, n_k, generator=g) > 0.6
    drop[..., 0] = False  # every query keeps one key
    additive = torch.randn(1, n_q, n_k, generator=g)
    matmul = torch.bmm if three_d else torch.matmul

    def fn(q, k, v, drop, additive):
        kt = k.transpose(-2, -1)
        s = matmul(q * c, kt) if scale_style == "pre_q" else matmul(q, kt)
        s = s * c if scale_style == "mul" else (s / (1 / c) if scale_style == "div" else s)
        if mask_kind == "additive":
            s = s + additive
        elif mask_kind == "masked_fill":
            s = s.masked_fill(drop, float("-inf"))
        elif mask_kind == "where":
            s = torch.where(~drop, s, -1e9)
        return matmul(torch.softmax(s, dim=-1), v)

    inputs = (q, k, v, drop, additive)
    gm = binarize(Fn(fn), inputs, BinarizeConfig(dynamic_batch=False))
    assert gm.meta["binattn_report"].num_rewritten == 1, str(gm.meta["binattn_report"])
    mask = {"none": None, "additive": additive, "masked_fill": ~drop, "where": ~drop}[mask_kind]
    want = bin_attn(q, k, v, scale=1.0 if scale_style == "none" else c, attn_mask=mask)
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), want, atol=1e-5, rtol=1e-4)


def test_integer_additive_mask_is_skipped_not_broken():
    q, k, v = qkv()
    m = torch.randint(-1, 1, (1, 1, N, N))
    fn = Fn(lambda q, k, v, m: torch.softmax(q @ k.transpose(-2, -1) * 0.3 + m, -1) @ v)
    gm = binarize(fn, (q, k, v, m))
    row = gm.meta["binattn_report"].rows[0]
    assert row.status == "skipped: unsupported mask dtype torch.int64 (bool or float only)"
    with torch.no_grad():
        torch.testing.assert_close(gm(q, k, v, m), fn(q, k, v, m))  # left float, still right


# --- the forms themselves ---------------------------------------------------------------

def test_every_form_matches_the_pytorch_it_is_written_as():
    """Each form's pattern, traced from its PyTorch function, matches that function's graph
    (as torch.export writes it), with every tensor argument bound to its placeholder."""
    import functools

    from torch.fx.experimental.proxy_tensor import make_fx

    from binattn.binarize_pass.matchers import forms
    from binattn.binarize_pass.matchers.patterns import example_input, match_at

    groups = [forms.PRODUCTS, forms.SCORE_FORMS, forms.SOFTMAXES, forms.DROPOUTS,
              forms.OUTPUTS, forms.SCALED_OPERAND, forms.KEY_TRANSPOSES]
    for group in groups:
        for form in group:
            args = [example_input(name, form.rank) for name in form.tensors]
            gm = make_fx(functools.partial(form.search, **form.scalars), pre_dispatch=True)(*args)
            gm.graph.eliminate_dead_code()
            out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
            fm = match_at([form], out)
            assert fm is not None, form.name
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            assert [fm.kw[name] for name in form.tensors] == placeholders, form.name
            assert {fm.kw[name] for name in form.scalars} == set(form.scalars.values())


# --- issue 18 forms: ALiBi baddbmm, soft-capping, terms from other products ----------------

def test_alibi_baddbmm_on_3d_views_with_beta_is_a_bias():
    """Bloom's form: baddbmm(alibi, q, kᵀ, beta, alpha) on [B·H, N, D] views, viewed back to
    [B, H, N, N] before the mask: alpha is the scale, beta · alibi an additive bias."""
    q, k, v = qkv()
    alibi = torch.randn(B * H, 1, N)
    mask = torch.zeros(B, 1, N, N).masked_fill(torch.rand(B, 1, N, N) > 0.7, -1e9)

    def fn(q, k, v, alibi, mask):
        s = alibi.baddbmm(q.reshape(B * H, N, D), k.reshape(B * H, N, D).transpose(-1, -2),
                          beta=0.5, alpha=0.3)
        return torch.softmax(s.view(B, H, N, -1) + mask, -1) @ v

    expected = bin_attn(q, k, v, scale=0.3, attn_mask=0.5 * alibi.view(B, H, 1, N) + mask)
    check(fn, (q, k, v, alibi, mask), expected)


def test_terms_from_other_products_are_a_bias_not_the_scores():
    """DeBERTa's form: q·kᵀ plus terms gathered from other products (q·posᵀ), on 3-D views:
    the gathered terms are an additive bias whichever side of ``+`` they are on."""
    q, k, v = qkv()
    pos = torch.randn(B * H, 2 * N, D)
    idx = torch.randint(0, 2 * N, (B * H, N, N))

    def fn(q, k, v, pos, idx):
        q3, k3 = q.reshape(B * H, N, D), k.reshape(B * H, N, D)
        c2p = torch.gather(torch.bmm(q3, pos.transpose(-1, -2)), -1, idx)
        s = c2p / 4.0 + torch.bmm(q3, k3.transpose(-1, -2) / 4.0)
        return torch.softmax(s.view(B, H, N, N), -1) @ v

    c2p = torch.gather(torch.bmm(q.reshape(B * H, N, D), pos.transpose(-1, -2)), -1, idx)
    expected = bin_attn(q, k, v, scale=0.25, attn_mask=(c2p / 4.0).view(B, H, N, N))
    check(fn, (q, k, v, pos, idx), expected)


def _capped(q, k, v, mask, cap=0.8):
    s = torch.tanh((q @ k.transpose(-2, -1)) * 0.5 / cap) * cap
    return torch.softmax(s + mask, -1) @ v


def test_soft_cap_is_the_ops_soft_cap_in_float_and_binary_mode():
    q, k, v = qkv()
    mask = torch.zeros(1, 1, N, N).masked_fill(torch.ones(N, N).triu(1).bool(), float("-inf"))
    gm = check(_capped, (q, k, v, mask),
               bin_attn(q, k, v, scale=0.5, attn_mask=mask, soft_cap=0.8))
    row = gm.meta["binattn_report"].rows[0]
    assert row.notes[0] == "logit soft-cap 0.8: kept (the op's soft_cap, float and binary mode)"
    for site in find_sites(gm):
        site.mode = "float"
    with torch.no_grad():
        torch.testing.assert_close(gm(q, k, v, mask), _capped(q, k, v, mask))
        assert not torch.allclose(gm(q, k, v, mask), _capped(q, k, v, mask, cap=1e9))


def _with_sinks(q, k, v, mask, sinks, shift=True):
    """GPT-OSS's eager attention: a per-head sink logit as one more column, dropped after the
    softmax (``shift``: less the row maximum, as GPT-OSS writes it)."""
    s = q @ k.transpose(-2, -1) * 0.5 + mask
    column = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    logits = torch.cat([s, column], dim=-1)
    if shift:
        logits = logits - logits.max(dim=-1, keepdim=True).values
    return torch.softmax(logits, -1)[..., :-1] @ v


@pytest.mark.parametrize("shift", [True, False])
def test_attention_sinks_are_passed_to_the_op(shift):
    q, k, v = qkv()
    mask = torch.zeros(1, 1, N, N).masked_fill(torch.ones(N, N).triu(1).bool(), float("-inf"))
    sinks = torch.linspace(-1.0, 2.0, H)
    fn = lambda q, k, v, m: _with_sinks(q, k, v, m, sinks, shift)  # noqa: E731
    gm = check(fn, (q, k, v, mask), bin_attn(q, k, v, scale=0.5, attn_mask=mask, sinks=sinks))
    assert "attention sinks" in gm.meta["binattn_report"].rows[0].notes[0]
    for site in find_sites(gm):
        site.mode = "float"
    with torch.no_grad():
        torch.testing.assert_close(gm(q, k, v, mask), fn(q, k, v, mask))


def test_a_column_that_is_no_per_head_sink_is_skipped():
    q, k, v = qkv()
    mask = torch.zeros(1, 1, N, N)
    per_query = lambda q, k, v, m: torch.softmax(torch.cat(  # noqa: E731
        [q @ k.transpose(-2, -1) + m, q[..., :1]], -1), -1)[..., :-1] @ v
    report = inspect(Fn(per_query), (q, k, v, mask))
    assert report.rows[0].status.startswith("skipped: the softmax's extra column")


def test_soft_cap_in_the_wrong_place_is_skipped():
    q, k, v = qkv()
    mask = torch.zeros(1, 1, N, N)
    after_mask = lambda q, k, v, m: torch.softmax(  # noqa: E731
        torch.tanh((q @ k.transpose(-2, -1) + m) / 0.8) * 0.8, -1) @ v
    scaled_after = lambda q, k, v, m: torch.softmax(  # noqa: E731
        torch.tanh((q @ k.transpose(-2, -1)) / 0.8) * 0.8 * 0.5 + m, -1) @ v
    for fn, reason in ((after_mask, "the scores are soft-capped after a mask is added"),
                       (scaled_after, "the scores are scaled after soft-capping")):
        report = inspect(Fn(fn), (q, k, v, mask))
        assert report.rows[0].status == f"skipped: {reason}"
