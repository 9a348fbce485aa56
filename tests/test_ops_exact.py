"""Exactness of sign_pack and popcount_scores: bit layout, XOR and AND identities, every D
1..256."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from binattn.ops import popcount_scores, reference, sign_pack

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def signs(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1, -1).to(torch.int64)


def exact_dot(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (signs(q) @ signs(k).transpose(-1, -2)).to(torch.int32)


def with_zeros(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Put exact zeros in ~10 % of entries: sign(0) = +1 must hold."""
    return x.masked_fill(torch.rand(x.shape, generator=gen) < 0.1, 0.0)


def test_bit_layout_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.0, -0.5] + [-1.0] * 30 + [3.0]])  # D = 35
    words, pops = sign_pack(x)
    assert words.dtype == torch.int32 and words.shape == (1, 2)
    assert words[0, 0].item() == 0b0101            # bits 0 and 2 set (1.0 and 0.0), rest negative
    assert words[0, 1].item() == 0b100             # x[34] >= 0 → bit 2 of word 1; padding bits 0
    assert pops.tolist() == [3]


def test_high_bit_is_sign_of_int32():
    x = torch.full((1, 32), -1.0)
    x[0, 31] = 1.0
    words, _ = sign_pack(x)
    assert words.item() == -(2**31)                # bit 31 set, viewed as int32


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_head_dim_1_to_256(dtype):
    gen = torch.Generator().manual_seed(1)
    for d in range(1, 257):
        q = with_zeros(torch.randn(2, 5, d, generator=gen), gen).to(dtype)
        k = with_zeros(torch.randn(2, 7, d, generator=gen), gen).to(dtype)
        qb, qp = sign_pack(q)
        kb, kp = sign_pack(k)
        expected = exact_dot(q, k)
        assert torch.equal(popcount_scores(qb, kb, d), expected), f"D={d}"
        assert torch.equal(reference.popcount_scores_and(qb, kb, d, qp, kp), expected), f"D={d}"
        assert torch.equal(qp, (q >= 0).sum(-1).to(torch.int32))


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 256), nq=st.integers(1, 33), nk=st.integers(1, 33),
       batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_popcount_scores_match_sign_matmul(d, nq, nk, batch, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = with_zeros(torch.randn(*batch, nq, d, generator=gen), gen).to(dtype)
    k = with_zeros(torch.randn(*batch, nk, d, generator=gen), gen).to(dtype)
    qb, qp = sign_pack(q)
    kb, kp = sign_pack(k)
    expected = exact_dot(q, k)
    xor = popcount_scores(qb, kb, d)
    assert xor.dtype == torch.int32 and xor.shape == (*batch, nq, nk)
    assert torch.equal(xor, expected)
    assert torch.equal(reference.popcount_scores_xor(qb, kb, d), expected)
    assert torch.equal(reference.popcount_scores_and(qb, kb, d, qp, kp), expected)
    assert torch.equal(reference.popcount_scores_and(qb, kb, d), expected)
    assert bool(((xor - d) % 2 == 0).all()) and int(xor.abs().max()) <= d


def test_matches_numpy_bitwise_count():
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(16, 96, generator=gen), torch.randn(24, 96, generator=gen)
    qb, kb = sign_pack(q)[0].numpy().view(np.uint32), sign_pack(k)[0].numpy().view(np.uint32)
    ref = 96 - 2 * np.bitwise_count(qb[:, None, :] ^ kb[None]).sum(-1, dtype=np.int32)
    assert np.array_equal(popcount_scores(torch.from_numpy(qb.view(np.int32)),
                                          torch.from_numpy(kb.view(np.int32)), 96).numpy(), ref)


def test_broadcast_batch_dims():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 5, 40, generator=gen), torch.randn(1, 3, 6, 40, generator=gen)
    got = popcount_scores(sign_pack(q)[0], sign_pack(k)[0], 40)
    assert torch.equal(got, exact_dot(q, k.expand(2, -1, -1, -1)))


def test_popcount32_all_bit_patterns_of_a_byte_walk():
    words = torch.tensor([0, -1, 1, -(2**31), 0x55555555, 0x0F0F0F0F, 12345678, -12345678],
                         dtype=torch.int32)
    expected = [bin(int(w) & 0xFFFFFFFF).count("1") for w in words.tolist()]
    assert reference.popcount32(words).tolist() == expected
