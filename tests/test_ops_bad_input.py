"""Bad input: clear ValueError/TypeError naming the argument; NaN policy."""
import pytest
import torch

import binattn

from binattn.ops import binary_attention, popcount_scores, sign_pack


def qkv(shape=(1, 2, 4, 8)):
    return torch.randn(shape), torch.randn(shape), torch.randn(shape)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: binary_attention(q[0, 0, 0], k, v), "q must be 4-D"),
    (lambda q, k, v: binary_attention(q[None], k, v), "q must be 4-D"),
    (lambda q, k, v: binary_attention(q, k[..., :4], v), "D mismatch"),
    (lambda q, k, v: binary_attention(q, k, v[:, :, :3]), "share Nk"),
    (lambda q, k, v: binary_attention(q[:, :, :0], k, v), "empty sequence"),
    (lambda q, k, v: binary_attention(q, k[:, :, :0], v[:, :, :0]), "empty sequence"),
    (lambda q, k, v: binary_attention(q.repeat(1, 3, 1, 1), k.repeat(1, 2, 1, 1),
                                      v.repeat(1, 2, 1, 1)), "multiple of k/v heads"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(3, 4, 4)), "bias of shape"),
    (lambda q, k, v: binary_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool)),
     "attn_mask of shape"),
    (lambda q, k, v: binary_attention(q, k, v, scale_mode="max"), "scale_mode"),
    (lambda q, k, v: binary_attention(q, k, v, scale_mode="static"), "q_scale"),
    (lambda q, k, v: binary_attention(q, k, v, top_n=0), "top_n"),
    (lambda q, k, v: binary_attention(q, k, v, pv_bits=4), "pv_bits"),
    (lambda q, k, v: binary_attention(q, k, v, binarizer="round"), "binarizer"),
    (lambda q, k, v: binary_attention(q, k, v, temperature=0.0), "temperature"),
    (lambda q, k, v: binary_attention(q, k, v, scale=float("nan")), "scale must be"),
    (lambda q, k, v: binary_attention(q, k, v, scale=float("inf")), "scale must be"),
    (lambda q, k, v: binary_attention(q, k, v, scale=float("-inf")), "scale must be"),
    (lambda q, k, v: binary_attention(q, k, v, scale=0.0), "scale must be"),
    (lambda q, k, v: binary_attention(q, k, v, scale=-0.5), "scale must be"),
    (lambda q, k, v: binary_attention(q, k, v, soft_cap=0.0), "soft_cap must be"),
    (lambda q, k, v: binary_attention(q, k, v, soft_cap=float("nan")), "soft_cap must be"),
    (lambda q, k, v: binary_attention(q, k, v, sinks=torch.zeros(3)), r"sinks must have shape"),
    (lambda q, k, v: binary_attention(q, k, v, sinks=torch.zeros(1, 2, 1, 1)),
     r"sinks must have shape \[Hq\] = \[2\]"),
    (lambda q, k, v: binary_attention(q, k, v, bias_index=torch.zeros(4, 4, dtype=torch.int32)),
     "bias_index needs bias"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(2, 4, 4),
                                      bias_index=torch.zeros(4, 4, dtype=torch.int32)),
     r"table \[T, H\]"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 3),
                                      bias_index=torch.zeros(4, 4, dtype=torch.int32)),
     "H = 1 or 2"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(0, 2),
                                      bias_index=torch.zeros(4, 4, dtype=torch.int32)),
     "T >= 1"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 2),
                                      bias_index=torch.zeros(4, 5, dtype=torch.int32)),
     r"shape \[Nq, Nk\]"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 2),
                                      bias_index=torch.full((4, 4), 5)), "outside the table"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 2),
                                      bias_index=torch.full((4, 4), -1)), "outside the table"),
])
def test_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad(*qkv())


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: binary_attention(q.long(), k, v), "q must be float16"),
    (lambda q, k, v: binary_attention(q, k.int(), v), "k must be float16"),
    (lambda q, k, v: binary_attention(q.numpy(), k, v), "q must be a torch.Tensor"),
    (lambda q, k, v: binary_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.int64)),
     "attn_mask must be bool"),
    (lambda q, k, v: sign_pack(torch.ones(3, 4, dtype=torch.int32)), "x must be float"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 2),
                                      bias_index=torch.zeros(4, 4)), "bias_index must be int32"),
    (lambda q, k, v: binary_attention(q, k, v, bias=torch.zeros(5, 2, dtype=torch.int32),
                                      bias_index=torch.zeros(4, 4, dtype=torch.int32)),
     "bias must be float16"),
    (lambda q, k, v: popcount_scores(q, k, 8), "q_bits must be int32"),
    (lambda q, k, v: binary_attention(q, k.double(), v), "one dtype.*k torch.float64"),
    (lambda q, k, v: binary_attention(q, k, v.half()), "one dtype.*v torch.float16"),
    (lambda q, k, v: binary_attention(q, k, v, scale="0.1"), "scale must be a float"),
    (lambda q, k, v: binary_attention(q, k, v, sinks=torch.zeros(2, dtype=torch.int64)),
     "sinks must be a float tensor"),
])
def test_type_errors(bad, match):
    with pytest.raises(TypeError, match=match):
        bad(*qkv())


def test_packed_word_count_must_match_d():
    bits, _ = sign_pack(torch.randn(3, 40))
    with pytest.raises(ValueError, match="D=70 needs 3"):
        popcount_scores(bits, bits, 70)
    with pytest.raises(ValueError, match="positive int"):
        popcount_scores(bits, bits, 0)
    with pytest.raises(ValueError, match="empty last dimension"):
        sign_pack(torch.randn(3, 0))


@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_nan_inf_policy(name, value, word):
    tensors = dict(zip("qkv", qkv()))
    tensors[name][0, 0, 1, 2] = value
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    with pytest.raises(ValueError, match=f"{name} contains {word}"):
        binary_attention(q, k, v)   # a direct eager call on CPU checks by default
    with pytest.raises(ValueError, match=f"{name} contains {word}"):
        binary_attention(q, k, v, check_finite=True)
    with binattn.ops.data_checks(), pytest.raises(ValueError, match=f"{name} contains {word}"):
        binattn.ops.binary_attention_with(q, k, v)   # a site: only under the global switch
    # unchecked (a model's sites, CUDA calls): nothing is read back, and the bad value shows in
    # the output of its (b, h) as NaN (Inf in v: Inf), never as a finite value from sign(NaN)
    for out in (binary_attention(q, k, v, check_finite=False),
                binattn.ops.binary_attention_with(q, k, v)):
        assert not torch.isfinite(out[0, 0]).all() and torch.isfinite(out[1:]).all()
    assert not torch.isfinite(out[0, 0]).all() and torch.isfinite(out[1:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_is_exact_where_its_one_pass_sum_is_not(dtype):
    """The check's fast path is one sum: finite values whose sum overflows still pass, and
    +Inf with −Inf (a NaN sum) or Inf alone is named by the exact scan."""
    big = torch.finfo(dtype).max
    q, k, v = (t.to(dtype) for t in qkv())
    v[0, 0, :, :] = big   # every v value of a head at the dtype's largest finite value
    binary_attention(q, k, v)   # no error: the sum overflows, the exact scan finds no Inf
    for values, word in (((float("inf"), float("-inf")), "Inf"), ((float("-inf"),), "Inf"),
                         ((float("nan"), float("inf")), "NaN")):
        bad = k.clone()
        for i, value in enumerate(values):
            bad[0, 1, i, 0] = value
        with pytest.raises(ValueError, match=f"k contains {word}"):
            binary_attention(q, bad, v)


def _nan_mask_case():
    q, k, v = qkv()
    mask = torch.zeros(4, 4)
    mask[1, 2] = float("nan")
    return q, k, v, mask


def test_unchecked_nan_mask_gives_nan_not_a_finite_wrong_output():
    """A float mask holding NaN: ``check_finite``/``data_checks`` name it; unchecked (no host
    read) the NaN reaches the output of its row through the softmax (the reference)."""
    q, k, v, mask = _nan_mask_case()
    with pytest.raises(ValueError, match="attn_mask contains NaN"):
        binary_attention(q, k, v, attn_mask=mask)   # eager on CPU: checked by default
    with binattn.ops.reference_only():
        out = binary_attention(q, k, v, attn_mask=mask, check_finite=False)
    assert torch.isnan(out[:, :, 1]).all() and torch.isfinite(out[:, :, [0, 2, 3]]).all()


def test_unchecked_nan_mask_gives_nan_on_the_default_path():
    """The CPU kernel's running max skips NaN scores; its dispatcher applies the NaN policy to
    the output (rows whose bias + mask hold a NaN), so the default path agrees."""
    q, k, v, mask = _nan_mask_case()
    out = binary_attention(q, k, v, attn_mask=mask, check_finite=False)
    assert torch.isnan(out[:, :, 1]).all() and torch.isfinite(out[:, :, [0, 2, 3]]).all()


@pytest.mark.parametrize("seed", range(12))
def test_inf_in_q_gives_nan_on_the_default_path_whatever_the_data(seed):
    """An Inf in q: the (b, h)'s output is NaN on the kernel path for any inputs (the kernel
    alone returned a dead row's zeros for some of them)."""
    torch.manual_seed(seed)
    q, k, v = torch.randn(3, 2, 2, 9, 32).unbind(0)
    q[0, 1, 3, 5] = float("inf")
    out = binary_attention(q, k, v, check_finite=False)
    assert torch.isnan(out[0, 1]).all() and torch.isfinite(out[1]).all()


def test_options_are_checked_without_reading_data():
    """Bad options raise from the options alone: on meta tensors (no data) too."""
    q, k, v = (torch.empty(1, 2, 4, 8, device="meta") for _ in range(3))
    with pytest.raises(ValueError, match="scale must be"):
        binary_attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="one dtype"):
        binary_attention(q, k, v.to(torch.float16))


def test_nan_check_is_skipped_while_exporting():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return binary_attention(q, k, v)

    torch.export.export(M(), qkv())   # no data-dependent check breaks tracing
