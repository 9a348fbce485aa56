"""Gradients (STE to q/k, real to v and bias) and torch.library.opcheck on every op."""
import pytest
import torch
from torch.autograd import gradcheck
from torch.library import opcheck

from binattn.ops import binary_attention, reference, sign_pack, split_keywords


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_ste_gradient_is_zero_outside_the_clip_window():
    q, k, v = (rand(1, 2, 8, 16, seed=s).mul(1.5).requires_grad_() for s in range(3))
    binary_attention(q, k, v, scale_mode="none").pow(2).sum().backward()
    assert bool((q.grad[q.detach().abs() > 1] == 0).all())
    assert bool((k.grad[k.detach().abs() > 1] == 0).all())
    assert q.grad[q.detach().abs() <= 1].abs().sum() > 0


def test_ste_clip_two_for_had():
    q, k, v = (rand(1, 1, 8, 16, seed=s).mul(1.5).requires_grad_() for s in range(3))
    binary_attention(q, k, v, scale_mode="none", ste_clip=2.0).pow(2).sum().backward()
    window = (q.detach().abs() > 1) & (q.detach().abs() <= 2)
    assert q.grad[window].abs().sum() > 0 and bool((q.grad[q.detach().abs() > 2] == 0).all())


GRAD_CASES = [
    dict(), dict(bias=True), dict(is_causal=True, bias=True), dict(mask=True), dict(top_n=3),
    dict(pv_bits=8), dict(static=True), dict(static=True, binarizer="tanh", temperature=0.5),
    dict(binarizer="scaled_tanh", temperature=3.0), dict(scale_mode="none", ste_clip=2.0),
    dict(gqa=True, bias=True), dict(dtype=torch.bfloat16, bias=True),
    dict(sinks=True), dict(sinks=True, mask=True, gqa=True, bias=True),
    dict(sinks=True, pv_bits=8, is_causal=True), dict(soft_cap=0.4, bias=True),
    dict(soft_cap=2.0, sinks=True, top_n=3),
]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_analytic_backward_equals_autograd_of_the_reference(case):
    """The op's backward (analytic VJP) == autograd through the differentiable reference."""
    case = dict(case)
    dtype = case.pop("dtype", torch.float32)
    hkv = 2 if case.pop("gqa", False) else 4
    q = rand(2, 4, 7, 16, seed=1, dtype=dtype)
    k, v = rand(2, hkv, 9, 16, seed=2, dtype=dtype), rand(2, hkv, 9, 16, seed=3, dtype=dtype)
    bias = rand(4, 7, 9, seed=4, dtype=dtype) if case.pop("bias", False) else None
    sinks = rand(4, seed=6, dtype=dtype) if case.pop("sinks", False) else None
    if case.pop("mask", False):
        case["attn_mask"] = rand(2, 1, 7, 9, seed=5) > -0.3
    if case.pop("static", False):
        case.update(scale_mode="static", q_scale=torch.tensor(0.9), k_scale=torch.tensor(1.2))
    extra = {name: t for name, t in (("bias", bias), ("sinks", sinks)) if t is not None}
    leaves = [t.requires_grad_() for t in (q, k, v, *extra.values())]
    out = binary_attention(q, k, v, **extra, **case)
    grads = torch.autograd.grad(out.float().pow(2).sum(), leaves)
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    ref = reference.binary_attention(*copies[:3], *split_keywords(
        **dict(zip(extra, copies[3:])), **case))
    ref_grads = torch.autograd.grad(ref.float().pow(2).sum(), copies)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("opts", [dict(), dict(is_causal=True), dict(top_n=3)])
def test_gradcheck_v_and_bias(opts):
    q, k = rand(1, 2, 6, 8, seed=1), rand(1, 2, 6, 8, seed=2)
    v = rand(1, 2, 6, 8, seed=3).requires_grad_()
    bias = rand(2, 6, 6, seed=4).requires_grad_()
    assert gradcheck(lambda v_, b_: binary_attention(q, k, v_, bias=b_, **opts), (v, bias))


@pytest.mark.parametrize("opts", [dict(), dict(is_causal=True, soft_cap=0.5),
                                  dict(attn_mask=True, top_n=3)])
def test_gradcheck_sinks_v_and_bias(opts):
    """Attention sinks get a real gradient: gradcheck (float64) of sinks, v and bias; with a
    fully masked row (all its weight on the sink) where a mask is given."""
    opts = dict(opts)
    q, k = rand(1, 2, 6, 8, seed=1), rand(1, 2, 6, 8, seed=2)
    v = rand(1, 2, 6, 8, seed=3).requires_grad_()
    bias = rand(2, 6, 6, seed=4).requires_grad_()
    sinks = rand(2, seed=5).requires_grad_()
    if opts.pop("attn_mask", False):
        keep = rand(1, 1, 6, 6, seed=7) > -0.5
        keep[..., 2, :] = False
        opts["attn_mask"] = keep
    assert gradcheck(lambda v_, b_, s_: binary_attention(q, k, v_, bias=b_, sinks=s_, **opts),
                     (v, bias, sinks))


@pytest.mark.parametrize("binarizer", ["tanh", "scaled_tanh"])
def test_gradcheck_soft_binarizers_all_inputs(binarizer):
    """HAD's tanh stages are truly differentiable: gradcheck q, k, v and bias together."""
    q, k, v = (rand(1, 2, 5, 8, seed=s).requires_grad_() for s in range(3))
    bias = rand(1, 2, 5, 5, seed=7).requires_grad_()
    fn = lambda q_, k_, v_, b_: binary_attention(q_, k_, v_, bias=b_, binarizer=binarizer,  # noqa
                                                 temperature=0.7)
    assert gradcheck(fn, (q, k, v, bias))


def test_gradcheck_mean_abs_scale_path_through_soft_binarizer():
    q, k, v = (rand(1, 1, 4, 6, seed=s).requires_grad_() for s in range(3))
    assert gradcheck(lambda a, b, c: binary_attention(a, b, c, binarizer="tanh",
                                                      scale_mode="mean_abs"), (q, k, v))


def test_gqa_gradients_sum_over_the_group():
    q = rand(1, 4, 6, 8, seed=1).requires_grad_()
    k, v = rand(1, 2, 6, 8, seed=2).requires_grad_(), rand(1, 2, 6, 8, seed=3).requires_grad_()
    binary_attention(q, k, v).sum().backward()
    k2 = k.detach().repeat_interleave(2, 1).requires_grad_()
    v2 = v.detach().repeat_interleave(2, 1).requires_grad_()
    binary_attention(q.detach(), k2, v2).sum().backward()
    torch.testing.assert_close(v.grad, v2.grad.view(1, 2, 2, 6, 8).sum(2))


TABLE_CASES = [dict(), dict(heads=1), dict(gqa=True, is_causal=True), dict(mask=True),
               dict(pv_bits=8), dict(reference=True)]


@pytest.mark.parametrize("case", TABLE_CASES)
def test_bias_table_equals_its_dense_gather(case):
    """bias=table + bias_index is the dense bias table[index] (forward, and the gradients of q,
    k, v), and the table's gradient is autograd's through the gather — on the CPU kernel and on
    the reference path."""
    from binattn.ops import RelPosBias, reference_only

    case = dict(case)
    hkv = 2 if case.pop("gqa", False) else 4
    rel = RelPosBias(case.pop("heads", 4), (3, 3))
    with torch.no_grad():
        rel.table.normal_(0, 0.5)
    q = rand(2, 4, 10, 16, seed=1, dtype=torch.float32).requires_grad_()
    k = rand(2, hkv, 10, 16, seed=2, dtype=torch.float32).requires_grad_()
    v = rand(2, hkv, 10, 16, seed=3, dtype=torch.float32).requires_grad_()
    if case.pop("mask", False):
        case["attn_mask"] = rand(10, 10, seed=5) > -0.5
    forced = reference_only() if case.pop("reference", False) else torch.enable_grad()
    with forced:
        out = binary_attention(q, k, v, bias=rel.table, bias_index=rel.index, **case)
        got = torch.autograd.grad(out.pow(2).sum(), (q, k, v, rel.table))
        dense = binary_attention(q, k, v, bias=rel(), **case)
        want = torch.autograd.grad(dense.pow(2).sum(), (q, k, v, rel.table))
    torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert got[3].abs().sum() > 0


def test_gradcheck_bias_table():
    q, k = rand(1, 2, 5, 8, seed=1), rand(1, 2, 5, 8, seed=2)
    v = rand(1, 2, 5, 8, seed=3).requires_grad_()
    table = rand(7, 2, seed=4).requires_grad_()
    index = torch.randint(0, 7, (5, 5), generator=torch.Generator().manual_seed(0))
    assert gradcheck(lambda v_, t_: binary_attention(q, k, v_, bias=t_, bias_index=index),
                     (v, table))


OPTION_SETS = [
    dict(),
    dict(bias=True, is_causal=True),
    dict(mask=True, top_n=3),
    dict(pv_bits=8, scale=0.2),
    dict(static=True, binarizer="tanh", temperature=0.5),
    dict(sinks=True, soft_cap=0.7, bias=True),
]


def attention_args(bias=False, mask=False, static=False, is_causal=False, scale=None,
                   top_n=None, pv_bits=None, binarizer="sign", temperature=1.0, ste_clip=1.0,
                   sinks=False, soft_cap=None):
    q = rand(2, 4, 6, 16, seed=1, dtype=torch.float32).requires_grad_()
    k = rand(2, 2, 6, 16, seed=2, dtype=torch.float32).requires_grad_()
    v = rand(2, 2, 6, 16, seed=3, dtype=torch.float32).requires_grad_()
    b = rand(4, 6, 6, seed=4, dtype=torch.float32).requires_grad_() if bias else None
    m = (rand(2, 1, 6, 6, seed=5) > -0.5) if mask else None
    qs, ks = (torch.tensor(0.8), torch.tensor(1.1)) if static else (None, None)
    mode = "static" if static else "mean_abs"
    args = (q, k, v, b, m, is_causal, scale, mode, qs, ks, top_n, pv_bits, binarizer,
            temperature, ste_clip)
    if sinks or soft_cap is not None:   # trailing arguments (bias_index, sinks, soft_cap)
        s = rand(4, seed=6, dtype=torch.float32).requires_grad_() if sinks else None
        args += (None, s, soft_cap)
    return args


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_opcheck_binary_attention(opts):
    opcheck(torch.ops.binattn.binary_attention.default, attention_args(**opts))


def test_opcheck_binary_attention_with_a_bias_table():
    args = list(attention_args(is_causal=True))
    args[3] = rand(9, 4, seed=6, dtype=torch.float32).requires_grad_()
    index = torch.randint(0, 9, (6, 6), generator=torch.Generator().manual_seed(1))
    opcheck(torch.ops.binattn.binary_attention.default, tuple(args) + (index,))


@pytest.mark.parametrize("opts", [dict(bias=True), dict(bias=True, sinks=True, soft_cap=0.7)])
def test_opcheck_binary_attention_backward(opts):
    args = attention_args(**opts)
    grad = rand(2, 4, 6, 16, seed=8, dtype=torch.float32)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    opcheck(torch.ops.binattn.binary_attention_backward.default, (grad,) + detached)


def test_opcheck_binary_attention_backward_with_delta():
    """The trailing ``delta`` (rowsum(grad ∘ out), what the autograd formula passes)."""
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a
                 for a in attention_args(bias=True, is_causal=True))
    grad = rand(2, 4, 6, 16, seed=8, dtype=torch.float32)
    out = torch.ops.binattn.binary_attention(*args)
    delta = reference.output_row_dot(grad, out)
    opcheck(torch.ops.binattn.binary_attention_backward.default,
            (grad,) + args + (None, None, None, delta))


@pytest.mark.parametrize("shape", [(3, 70), (2, 3, 5, 32), (4, 1)])
def test_opcheck_sign_pack(shape):
    opcheck(torch.ops.binattn.sign_pack.default, (rand(*shape, dtype=torch.float32),))


def test_opcheck_popcount_scores():
    qb, _ = sign_pack(rand(2, 3, 5, 40, dtype=torch.float32))
    kb, _ = sign_pack(rand(2, 3, 7, 40, seed=1, dtype=torch.float32))
    opcheck(torch.ops.binattn.popcount_scores.default, (qb, kb, 40))


def test_torch_compile_and_export_see_the_op():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return binary_attention(q, k, v, is_causal=True)

    q, k, v = (rand(1, 2, 8, 16, seed=s, dtype=torch.float32) for s in range(3))
    ep = torch.export.export(M(), (q, k, v))
    assert any(n.target is torch.ops.binattn.binary_attention.default for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(q, k, v), M()(q, k, v))
    compiled = torch.compile(M(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), M()(q, k, v))
