"""The CPU kernels read q, k, v in place and write the op's output in place.

q, k, v in float32, float16 or bfloat16, laid out as a fused QKV projection's
``reshape → permute → unbind`` views, HF's ``transpose(1, 2)``, a GQA/MQA ``expand`` (stride 0
on H) or slices of a fused GQA projection, match the reference with the kernel running (no
silent fallback), for float32 and 8-bit P·V, causal, masks and biases. A forward of a small
binarized model copies no tensor as large as q inside the attention op (the profiler's
``aten::clone/copy_/_to_copy/contiguous`` under ``binattn::binary_attention``).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import tvm  # noqa: F401  (a test dependency: a missing install must fail, not skip)

import binattn
from binattn import ops
from binattn.models import demo_vit
from binattn.ops import dispatch, reference
from binattn.tvm_kernels.cpu import build as cpu_build, dispatch as cpu_dispatch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COPIES = {"aten::clone", "aten::copy_", "aten::_to_copy", "aten::contiguous"}


pytestmark = pytest.mark.usefixtures("tvm_cpu_cache")


def _fused_qkv(dtype, b=2, n=37, h=4, d=40, gen=None):
    """timm's ``qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``."""
    qkv = torch.randn(b, n, 3, h, d, generator=gen).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _hf_mqa(dtype, b=2, h=4, n_q=29, n_k=70, d=24, dv=17, gen=None):
    """HF's ``view(B, N, H, D).transpose(1, 2)`` for q; k, v of one kv head expanded over H."""
    q = torch.randn(b, n_q, h, d, generator=gen).to(dtype).transpose(1, 2)
    k = torch.randn(b, 1, n_k, d, generator=gen).to(dtype).expand(b, h, n_k, d)
    v = torch.randn(b, n_k, 1, dv, generator=gen).to(dtype).transpose(1, 2).expand(b, h, n_k, dv)
    return q, k, v


def _gqa_sliced(dtype, b=1, n=50, d=40, gen=None):
    """Fused GQA projection (8 q heads, 2 kv heads) sliced into strided q, k, v."""
    proj = torch.randn(b, n, 12, d, generator=gen).to(dtype).transpose(1, 2)
    return proj[:, :8], proj[:, 8:10], proj[:, 10:12]


LAYOUTS = {"fused_qkv": _fused_qkv, "hf_mqa": _hf_mqa, "gqa_sliced": _gqa_sliced}
OPTIONS = {"fp32_pv": {}, "pv8": {"pv_bits": 8}, "causal": {"is_causal": True},
           "mask": "mask", "bias_pv8": "bias"}


def _options(name: str, q: torch.Tensor, k: torch.Tensor, gen) -> dict:
    opt = OPTIONS[name]
    if opt == "mask":
        return {"attn_mask": torch.rand(q.shape[0], 1, q.shape[2], k.shape[2], generator=gen) > 0.3}
    if opt == "bias":
        return {"bias": torch.randn(q.shape[1], q.shape[2], k.shape[2], generator=gen),
                "pv_bits": 8}
    return dict(opt)


def _reference(q, k, v, **kwargs):
    with dispatch.reference_only():
        return ops.binary_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_strided_inputs_match_the_reference_in_place(dtype, layout, option):
    gen = torch.Generator().manual_seed(len(layout) * 7 + len(option))
    q, k, v = LAYOUTS[layout](dtype, gen=gen)
    assert not q.is_contiguous() and not v.is_contiguous()
    kwargs = _options(option, q, k, gen)
    out = ops.binary_attention(q, k, v, **kwargs)
    path = dispatch.kernel_report()["binary_attention/cpu"]
    assert path.startswith("tvm-llvm"), path
    ref = _reference(q, k, v, **kwargs)
    assert out.dtype == v.dtype and out.shape == ref.shape
    assert out.stride() == reference.empty_output(q, v).stride()
    exact = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    atol = 3 * v.abs().max().item() / 255 if kwargs.get("pv_bits") == 8 else exact
    torch.testing.assert_close(out.float(), ref.float(), rtol=exact, atol=max(atol, exact))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sign_pack_reads_strided_half_inputs(dtype):
    q, _, _ = _fused_qkv(dtype, gen=torch.Generator().manual_seed(3))
    bits, pops, abs_sum = cpu_dispatch.pack_rows(q)
    ref_bits, ref_pops = reference.sign_pack(q.float())
    assert torch.equal(bits, ref_bits) and torch.equal(pops, ref_pops)
    torch.testing.assert_close(abs_sum, q.float().abs().sum(-1))
    words, popcounts = ops.sign_pack(q)
    assert dispatch.kernel_report()["sign_pack/cpu"].startswith("tvm-llvm")
    assert torch.equal(words, ref_bits) and torch.equal(popcounts, ref_pops)


def test_a_head_dim_of_another_stride_is_still_served():
    """A last dim that is not unit-stride is the one layout copied (to contiguous)."""
    q, k, v = (t.transpose(-1, -2) for t in
               (torch.randn(1, 2, 16, 30) for _ in range(3)))
    out = ops.binary_attention(q, k, v)
    assert dispatch.kernel_report()["binary_attention/cpu"].startswith("tvm-llvm")
    torch.testing.assert_close(out, _reference(q, k, v), rtol=1e-5, atol=1e-5)


def _large_copies_in_attention(fn, numel: int) -> tuple[int, list]:
    """(calls of the attention op, copies of ≥ numel elements made inside it) while ``fn``
    runs: a copy's size is its first input's (``copy_``'s destination, ``clone``'s source)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    calls, copies = 0, []
    for event in prof.events():
        calls += event.name == "binattn::binary_attention"
        if event.name not in COPIES or not event.input_shapes or not event.input_shapes[0]:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != "binattn::binary_attention":
            parent = parent.cpu_parent
        if parent is not None and math.prod(event.input_shapes[0]) >= numel:
            copies.append((event.name, event.input_shapes[0]))
    return calls, copies


@pytest.mark.parametrize("dtype,bias,pv_bits", [(torch.float32, None, None),
                                                (torch.bfloat16, "relpos", None),
                                                (torch.float32, "relpos", 8),
                                                (torch.bfloat16, None, 8)])
def test_model_forward_copies_nothing_as_large_as_q(dtype, bias, pv_bits):
    """The ViT's fused-QKV views go in and the output comes out as they are; a relpos bias
    table is gathered once into the kernel's layout (no copy of it either)."""
    torch.manual_seed(0)
    model = demo_vit(depth=2).to(dtype=dtype)
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    gm = binattn.binarize(model, (x,), binattn.BinarizeConfig(bias=bias, pv_bits=pv_bits))
    assert gm.meta["binattn_report"].num_rewritten == 2
    with torch.no_grad():
        gm(x)  # builds
        assert dispatch.kernel_report()["binary_attention/cpu"].startswith("tvm-llvm")
        heads, dim = model.blocks[0].attn.heads, model.blocks[0].attn.head_dim
        q_numel = x.shape[0] * heads * 65 * dim  # 64 patches + the class token
        calls, copies = _large_copies_in_attention(lambda: gm(x), q_numel)
    assert calls == 2 and copies == []
