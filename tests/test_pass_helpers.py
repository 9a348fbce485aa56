"""Shared helpers of the binarize-pass tests (and a test of the helper itself): a hand-made
reference for models whose attention
goes through ``F.scaled_dot_product_attention`` (patched to ``binattn.ops.binary_attention``)."""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

import binattn
import binattn.binarize_pass

warnings.filterwarnings("ignore", message=".*reference path.*")


@contextlib.contextmanager
def sdpa_as_binary_attention(**options):
    """Within the block, every SDPA call runs binattn.ops.binary_attention with its own
    mask, causality, scale and GQA (plus ``options``, e.g. scale_mode): the by-hand reference
    of a binarized model."""
    original = F.scaled_dot_product_attention
    calls = []

    def binary(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
        assert dropout_p == 0.0, "the reference only covers inference"
        calls.append(tuple(q.shape))
        return binattn.ops.binary_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                            scale=scale, **options)

    F.scaled_dot_product_attention = binary
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original


def rows_status(gm) -> list[str]:
    return [r.status for r in gm.meta["binattn_report"].rows]


def output_tensor(out):
    """The main output tensor of a model (HF ModelOutput, tuple or tensor)."""
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def assert_binarized_matches(model, inputs, reference_model=None, expected_sites=None, *,
                             kwargs=None, atol=1e-5, config=None):
    """binarize(model) has ``expected_sites`` rewritten sites, and equals the reference model
    (default: the model itself) run with SDPA replaced by binary attention."""
    kwargs = kwargs or {}
    gm = binattn.binarize(model, inputs, config, example_kwargs=kwargs or None)
    report = gm.meta["binattn_report"]
    assert report.num_rewritten == expected_sites, str(report)
    assert report.num_skipped == 0, str(report)
    ref_model = reference_model if reference_model is not None else model
    with torch.no_grad():
        got = output_tensor(gm(*inputs, **kwargs))
    # with grad on, so that torch's fused fast paths (nn.TransformerEncoder) stay off
    with sdpa_as_binary_attention() as calls:
        want = output_tensor(ref_model(*inputs, **kwargs)).detach()
    assert len(calls) == expected_sites
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    # mean_abs hides a lost softmax scale (it rescales with q); "none" shows it
    for site in binattn.binarize_pass.find_sites(gm):
        site.scale_mode = "none"
    with torch.no_grad():
        got = output_tensor(gm(*inputs, **kwargs))
    with sdpa_as_binary_attention(scale_mode="none"):
        want = output_tensor(ref_model(*inputs, **kwargs)).detach()
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    for site in binattn.binarize_pass.find_sites(gm):
        site.scale_mode = "mean_abs"
    return gm


def test_reference_patch_really_binarizes():
    """Guard for the helper: the patched SDPA is not the float SDPA."""
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with sdpa_as_binary_attention():
        patched = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(plain, patched)
