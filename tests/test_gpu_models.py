"""Whole models on the GPU: the user-facing routes reach binattn's CUDA kernels and agree with the
reference op.

Skips cleanly without a CUDA GPU. Covers ``torch.compile(model, backend="binattn")`` on a CUDA
bf16 model (plain and 8-bit P/V), ``binattn.binarize`` with a learned relative-position bias
(the table and its index reach the kernel, which looks the table up itself), and a training step
through the CUDA forward kernel and the STE backward.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import binattn
from binattn import backend
from binattn.models import demo_vit
from binattn.ops import dispatch
from tests.test_pass_helpers import sdpa_as_binary_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
backend.register()


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _vit(dtype=torch.bfloat16):
    torch.manual_seed(0)
    model = demo_vit(depth=2).eval().to("cuda", dtype)
    x = torch.randn(8, 3, 32, 32, device="cuda", dtype=dtype)
    return model, x


@pytest.mark.parametrize("pv_bits", (None, 8))
def test_compile_backend_runs_the_cuda_kernel(pv_bits):
    model, x = _vit()
    options = {} if pv_bits is None else {"pv_bits": pv_bits}
    compiled = torch.compile(model, backend="binattn", fullgraph=True, options=options)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compiled(x)
    assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
    with torch.no_grad(), dispatch.reference_only(), sdpa_as_binary_attention(**options):
        want = model(x)
    assert got.dtype == torch.bfloat16 and not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), want.float(), atol=0.1, rtol=0.05)


def test_binarize_with_relpos_bias_and_a_training_step():
    model, xb = _vit()
    gm = binattn.binarize(model, (xb,), binattn.BinarizeConfig(bias="relpos"))
    assert gm.meta["binattn_report"].num_rewritten == 2
    with torch.no_grad():  # a bias big enough to matter
        for name, p in gm.named_parameters():
            if "table" in name:
                p.normal_(0, 0.5)
    sites = [n for n in gm.graph.nodes if n.op == "call_module" and "binattn_site" in n.target]
    assert sites and all("bias_index" in n.kwargs for n in sites)
    with torch.no_grad():
        out = gm(xb)
        assert dispatch.kernel_report()["binary_attention/cuda"] == "tvm-cuda:binary_attention"
        with dispatch.reference_only():
            ref = gm(xb)
    torch.testing.assert_close(out.float(), ref.float(), atol=0.1, rtol=0.05)
    # one optimizer step: CUDA forward kernel, STE backward (reference VJP) into the relpos tables
    params = [p for p in gm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = gm(xb).float().pow(2).mean()
        loss.backward()
    tables = [p for n, p in gm.named_parameters() if "table" in n]
    assert tables and all(t.grad is not None and torch.isfinite(t.grad).all() for t in tables)
    assert any(t.grad.abs().sum() > 0 for t in tables)
    opt.step()
