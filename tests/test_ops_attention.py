"""binary_attention against a straightforward float implementation and against SDPA on ±1 inputs.

The option cases come from the shared catalogue (``op_cases``): every case the float64 loop
implements is checked against it here, on whatever path the op takes (kernel or reference).
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from binattn.ops import binary_attention
from binattn.ops.reference import table_bias

from .op_cases import CASES, dead_rows

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def naive_attention(q, k, v, *, bias=None, attn_mask=None, is_causal=False, scale=None,
                    scale_mode="mean_abs", q_scale=None, k_scale=None, top_n=None, pv_bits=None,
                    bias_index=None, sinks=None, soft_cap=None):
    """Loop over (b, h) and rows in float64: the math of DESIGN.md written out plainly."""
    q, k, v = q.double(), k.double(), v.double()
    if bias_index is not None:
        bias = table_bias(bias, bias_index)
    b_, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(b_, hq, nq, v.shape[-1], dtype=torch.float64)
    sign = lambda x: torch.where(x >= 0, 1.0, -1.0).double()  # noqa: E731
    for b, h in itertools.product(range(b_), range(hq)):
        kh = h // (hq // hkv)
        if scale_mode == "mean_abs":
            sq, sk = q[b, h].abs().mean(), k[b, kh].abs().mean()
        elif scale_mode == "static":
            sq = float(q_scale.double().expand(b_, hq, 1, 1)[b, h, 0, 0])
            sk = float(k_scale.double().expand(b_, hkv, 1, 1)[b, kh, 0, 0])
        else:
            sq = sk = 1.0
        s = sq * sk * scale * (sign(q[b, h]) @ sign(k[b, kh]).T)
        if soft_cap is not None:
            s = soft_cap * torch.tanh(s / soft_cap)
        if bias is not None:
            s = s + bias.double().expand(b_, hq, nq, nk)[b, h]
        if attn_mask is not None:
            m = attn_mask.expand(b_, hq, nq, nk)[b, h]
            s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.double()
        if is_causal:
            s = s.masked_fill(torch.ones(nq, nk, dtype=torch.bool).tril().logical_not(), -math.inf)
        if top_n is not None:
            for i in range(nq):
                order = sorted(range(nk), key=lambda j: (-s[i, j].item(), j))
                s[i, order[top_n:]] = -math.inf
        p = torch.zeros_like(s)
        alive = ~torch.isneginf(s).all(-1)
        if sinks is None:
            p[alive] = torch.softmax(s[alive], -1)
        else:   # one more logit in each row's denominator, no value
            sink = sinks.double()[h].expand(int(alive.sum()), 1)
            p[alive] = torch.softmax(torch.cat([s[alive], sink], -1), -1)[:, :-1]
        vv = v[b, kh]
        if pv_bits == 8:
            p = torch.round(p * 255).clamp(0, 255) / 255
            inv = 127 / vv.abs().amax(0, keepdim=True)
            vv = torch.round(vv * inv).clamp(-127, 127) / (inv + 1e-6)
        out[b, h] = p @ vv
    return out


def inputs(shape_q, shape_kv, dtype=torch.float32, seed=0, dv=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=gen)
    k = torch.randn(shape_kv, generator=gen)
    v_shape = shape_kv[:-1] + ((dv,) if dv else shape_kv[-1:])
    v = torch.randn(v_shape, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def check(got, q, k, v, **opts):
    ref = naive_attention(q, k, v, **opts)
    assert got.dtype == v.dtype and got.shape == ref.shape
    # 8-bit P: a level can flip at a rounding boundary between float32 and float64
    atol = TOL[v.dtype] + (2 * v.abs().max().item() / 255 if opts.get("pv_bits") == 8 else 0)
    torch.testing.assert_close(got.double(), ref, atol=atol, rtol=TOL[v.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scale_mode", ["mean_abs", "none"])
def test_plain(dtype, scale_mode):
    q, k, v = inputs((2, 3, 11, 40), (2, 3, 13, 40), dtype)
    check(binary_attention(q, k, v, scale_mode=scale_mode), q, k, v, scale_mode=scale_mode)


@pytest.mark.op_cases(naive=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_case_matches_naive(op_case, case_gen, dtype):
    """Every catalogue case the float64 loop implements (masks, causal, GQA, biases, a bias
    table, scale modes, top-N, 8-bit P/V, sinks, soft-cap), in float32 and bfloat16."""
    q, k, v, kwargs = CASES[op_case].inputs(case_gen, dtype=dtype)
    got = binary_attention(q, k, v, **kwargs)
    check(got, q, k, v, **kwargs)
    dead = dead_rows(kwargs, got.shape)
    if dead is not None:
        assert not got[dead].any()


def test_top_n_keeps_exactly_n_per_row():
    from binattn.ops.reference import top_n_mask

    scores = torch.randint(-3, 4, (4, 9, 30)).float()        # many ties
    mask = top_n_mask(scores, 7)
    assert bool((mask.sum(-1) == 7).all())
    kept_min = scores.masked_fill(~mask, float("inf")).amin(-1)
    dropped_max = scores.masked_fill(mask, float("-inf")).amax(-1)
    assert bool((kept_min >= dropped_max).all())


def test_pv_bits_8():
    q, k, v = inputs((2, 2, 16, 32), (2, 2, 16, 32), seed=3)
    got = binary_attention(q, k, v, pv_bits=8)
    ref = naive_attention(q, k, v, pv_bits=8)
    # a P level can flip at a rounding boundary between float32 and float64: allow 2 levels
    assert (got.double() - ref).abs().max() <= 2 * v.abs().max() / 255
    assert (got - binary_attention(q, k, v)).abs().max() > 0     # the quantization is applied


def test_fully_masked_row_gives_zeros():
    q, k, v = inputs((1, 1, 4, 8), (1, 1, 4, 8))
    keep = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    keep[0, 0, 2] = False
    out = binary_attention(q, k, v, attn_mask=keep)
    assert torch.equal(out[0, 0, 2], torch.zeros(8)) and torch.isfinite(out).all()


def test_three_d_inputs_are_one_head():
    q, k, v = inputs((3, 9, 16), (3, 9, 16))
    out = binary_attention(q, k, v, is_causal=True)
    assert out.shape == (3, 9, 16)
    torch.testing.assert_close(out, binary_attention(q[:, None], k[:, None], v[:, None],
                                                     is_causal=True)[:, 0])


@pytest.mark.parametrize("opts", [dict(), dict(is_causal=True), dict(mask=True), dict(gqa=True),
                                  dict(scale=0.3)])
def test_equals_sdpa_on_plus_minus_one_inputs(opts):
    """On ±1 q, k with scale_mode='none', binary attention IS softmax attention: SDPA is an
    oracle."""
    gen = torch.Generator().manual_seed(7)
    hkv = 2 if opts.get("gqa") else 4
    q = torch.randint(0, 2, (2, 4, 9, 32), generator=gen).float() * 2 - 1
    k = torch.randint(0, 2, (2, hkv, 9, 32), generator=gen).float() * 2 - 1
    v = torch.randn(2, hkv, 9, 32, generator=gen)
    mask = torch.rand(2, 1, 9, 9, generator=gen) > 0.4 if opts.get("mask") else None
    if mask is not None:
        mask[..., 0] = True
    ours = binary_attention(q, k, v, scale_mode="none", attn_mask=mask,
                            is_causal=opts.get("is_causal", False), scale=opts.get("scale"))
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                            is_causal=opts.get("is_causal", False),
                                            scale=opts.get("scale"), enable_gqa=hkv != 4)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sinks_take_weight_and_soft_cap_bounds_the_scores():
    """A sink only lowers every weight of its head (rows sum to < 1; a very negative sink is
    no sink); a soft cap c keeps every score in (−c, c)."""
    from binattn.ops import reference
    from binattn.ops.options import AttentionOptions, AttentionTensors

    q, k, v = inputs((2, 3, 6, 16), (2, 3, 7, 16))
    sinks = torch.tensor([0.0, 2.0, -1e4])
    _, probs = reference.binary_attention(q, k, v, AttentionTensors(sinks=sinks),
                                          return_probs=True)
    rows = probs.sum(-1)
    assert bool((rows[:, :2] < 1).all()) and torch.allclose(rows[:, 2], torch.ones(2, 6))
    torch.testing.assert_close(binary_attention(q[:, 2:], k[:, 2:], v[:, 2:], sinks=sinks[2:]),
                               binary_attention(q[:, 2:], k[:, 2:], v[:, 2:]))
    scores = reference.binary_scores(q, k, AttentionOptions(scale_mode="none", scale=1.0))
    capped = reference.soft_capped(scores, 3.0)
    assert scores.abs().max() > 3.0 and capped.abs().max() < 3.0
