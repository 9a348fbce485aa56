"""One catalogue of ``binary_attention`` option cases, shared by the reference, CPU-kernel and
GPU-kernel tests (``test_ops_attention``, ``test_tvm_cpu``, ``test_gpu_kernels``).

What it does: names each case (masks, causal, GQA, dense/head/table bias, scale modes, top-N,
8-bit P/V, binarizers) once, as an :class:`OpCase` that draws its inputs on any device from a
generator: ``q, k, v, kwargs = CASES["gqa"].inputs(gen, SHAPE)`` with ``kwargs`` the keyword
arguments of ``binattn.ops.binary_attention``. Each suite picks the cases it runs with
:func:`names` (``kernel="cpu"``: the cases the CPU kernel tests take; ``naive=True``: the cases
the float64 loop of ``test_ops_attention`` implements) over its own base :class:`Shape`.
What it does not: run or compare anything (the suites do), or hold dtype sweeps (they
parametrize dtypes themselves).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from binattn.ops.bias import relpos_index, relpos_table_size

KERNELS = ("cpu", "cuda")


@dataclass(frozen=True)
class Shape:
    """Sizes of q ``[B, Hq, Nq, D]``, k ``[B, Hkv, Nk, D]``, v ``[B, Hkv, Nk, Dv]``; ``Dv`` is
    ``value_dim`` or ``value_factor · D``."""

    batch: int = 2
    heads: int = 4
    kv_heads: int = 4
    n_q: int = 45
    n_k: int = 61
    head_dim: int = 64
    value_dim: Optional[int] = None
    value_factor: int = 1

    @property
    def dv(self) -> int:
        return self.value_dim or self.value_factor * self.head_dim


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normal values on ``gen``'s device with no exact zeros (sign(0) has tests of its own)."""
    x = torch.randn(*shape, generator=gen, device=gen.device, dtype=torch.float32)
    return (x + 0.01 * torch.sign(x)).to(dtype)


def relpos_bias(heads: int, grid: tuple[int, int], seed: int, device: Any = "cpu",
                prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A BEiT relative-position table ``[T, heads]`` (normal, std 0.5: large enough to move the
    output) and its int32 index ``[N, N]``, N = prefix + Gh·Gw."""
    gen = torch.Generator().manual_seed(seed)
    table = 0.5 * torch.randn(relpos_table_size(grid), heads, generator=gen)
    index = relpos_index(grid, prefix).to(torch.int32)
    return table.to(device), index.to(device)


@dataclass(frozen=True)
class OpCase:
    """One option case over a base :class:`Shape`.

    Attributes:
        options: ``binary_attention`` keywords that are no tensors (``is_causal``, ``scale``,
            ``scale_mode``, ``top_n``, ``pv_bits``, ``binarizer``, ...).
        shape: overrides of the base shape (a case that needs GQA or Nq = Nk sets them).
        mask: ``"bool"`` (``[B, 1, Nq, Nk]``, keep 70 %, row 3 of batch 0 fully masked),
            ``"float"`` (additive ``[Nq, Nk]``) or ``"key_padding"`` (``[B, 1, 1, Nk]``, the
            second half of batch 0's keys at the float32 minimum).
        bias: ``"dense"`` (``[Hq, Nq, Nk]``), ``"head"`` (``[1, Hq, 1, 1]``) or ``"table"``
            (a relative-position table and ``bias_index``; the shape is its grid's).
        static: static scales (``scale_mode="static"``, a 0-d ``q_scale``, a per-head
            ``k_scale``).
        sinks: attention sinks, one normal logit per query head (``sinks [Hq]``).
        dtype: the dtype of q, k, v where the case is about it (else the suite's).
        kernels: the kernel suites that take this case (the others test it on the reference,
            or as a fallback where no kernel implements it).
        naive: whether ``test_ops_attention``'s float64 loop implements it (sign binarizer).
    """

    options: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)
    mask: Optional[str] = None
    bias: Optional[str] = None
    static: bool = False
    sinks: bool = False
    dtype: Optional[torch.dtype] = None
    kernels: tuple[str, ...] = KERNELS
    naive: bool = True

    def with_options(self, **options: Any) -> "OpCase":
        """This case with more (or other) option keywords."""
        return replace(self, options={**self.options, **options})

    def shape_of(self, base: Shape, **sizes: int) -> Shape:
        """The base shape with the suite's ``sizes``, then this case's overrides."""
        shape = replace(base, **{**sizes, **self.shape})
        if self.bias == "table":
            n = 1 + TABLE_GRID[0] * TABLE_GRID[1]
            shape = replace(shape, n_q=n, n_k=n)
        return shape

    def inputs(self, gen: torch.Generator, base: Shape = Shape(), *,
               dtype: torch.dtype = torch.float32, **sizes: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """``(q, k, v, kwargs)`` on ``gen``'s device: q, k, v first, then masks, biases and
        scales, all drawn from ``gen`` (float32 masks, biases and scales)."""
        s = self.shape_of(base, **sizes)
        dtype = self.dtype or dtype
        q = randn(gen, s.batch, s.heads, s.n_q, s.head_dim, dtype=dtype)
        k = randn(gen, s.batch, s.kv_heads, s.n_k, s.head_dim, dtype=dtype)
        v = randn(gen, s.batch, s.kv_heads, s.n_k, s.dv, dtype=dtype)
        kwargs = dict(self.options)
        device = gen.device
        if self.mask == "bool":
            mask = torch.rand(s.batch, 1, s.n_q, s.n_k, generator=gen, device=device) > 0.3
            mask[0, 0, 3] = False  # a row with no visible key gives 0
            kwargs["attn_mask"] = mask
        elif self.mask == "float":
            kwargs["attn_mask"] = randn(gen, s.n_q, s.n_k)
        elif self.mask == "key_padding":
            keep = torch.ones(s.batch, 1, 1, s.n_k, device=device)
            keep[0, ..., s.n_k // 2:] = 0
            kwargs["attn_mask"] = (1 - keep) * torch.finfo(torch.float32).min
        if self.bias == "dense":
            kwargs["bias"] = randn(gen, s.heads, s.n_q, s.n_k) * 0.5
        elif self.bias == "head":
            kwargs["bias"] = randn(gen, 1, s.heads, 1, 1)
        elif self.bias == "table":
            seed = int(torch.randint(0, 2**31, (1,), generator=gen, device=device))
            kwargs["bias"], kwargs["bias_index"] = relpos_bias(s.heads, TABLE_GRID, seed,
                                                               device)
        if self.static:
            kwargs.update(scale_mode="static", q_scale=torch.tensor(0.7, device=device),
                          k_scale=torch.rand(1, s.kv_heads, 1, 1, generator=gen,
                                             device=device) + 0.5)
        if self.sinks:
            kwargs["sinks"] = randn(gen, s.heads)
        return q, k, v, kwargs


TABLE_GRID = (7, 9)
CPU_ONLY = ("cpu",)
NO_KERNEL: tuple[str, ...] = ()

CASES: dict[str, OpCase] = {
    "plain": OpCase(),
    "odd_dims": OpCase(shape=dict(n_q=37, n_k=53, head_dim=33, value_dim=17),
                       kernels=CPU_ONLY),
    "wide_v": OpCase(shape=dict(value_factor=2)),
    "gqa": OpCase(shape=dict(heads=4, kv_heads=2)),
    "causal": OpCase(dict(is_causal=True), shape=dict(n_q=129, n_k=129)),
    "mqa_causal": OpCase(dict(is_causal=True), shape=dict(heads=4, kv_heads=1, n_q=133,
                                                          n_k=133)),
    "gqa_causal": OpCase(dict(is_causal=True), shape=dict(heads=4, kv_heads=2, n_q=70, n_k=90),
                         kernels=CPU_ONLY),
    "bool_mask": OpCase(mask="bool"),
    "bool_mask_bias": OpCase(mask="bool", bias="dense", kernels=CPU_ONLY),
    "bool_mask_causal": OpCase(dict(is_causal=True), mask="bool", kernels=CPU_ONLY),
    "float_mask_bias": OpCase(mask="float", bias="dense"),
    "key_padding": OpCase(mask="key_padding", kernels=CPU_ONLY),
    "dense_bias_causal": OpCase(dict(is_causal=True), bias="dense", kernels=CPU_ONLY),
    "dense_bias": OpCase(bias="dense", kernels=CPU_ONLY),
    "head_bias": OpCase(bias="head"),
    "relpos_table": OpCase(bias="table", kernels=CPU_ONLY),
    "static": OpCase(static=True),
    "none_scale": OpCase(dict(scale_mode="none", scale=0.05)),
    "custom_scale": OpCase(dict(scale=0.25), kernels=CPU_ONLY),
    "pv8": OpCase(dict(pv_bits=8), shape=dict(n_k=130), kernels=CPU_ONLY),
    "pv8_causal_gqa_bias": OpCase(dict(pv_bits=8, is_causal=True), bias="dense",
                                  shape=dict(heads=4, kv_heads=1), kernels=CPU_ONLY),
    "float16": OpCase(dtype=torch.float16, kernels=CPU_ONLY),
    "top_n": OpCase(dict(top_n=5), kernels=NO_KERNEL),
    "top_n_causal": OpCase(dict(top_n=3, is_causal=True), kernels=NO_KERNEL),
    "top_1": OpCase(dict(top_n=1), kernels=NO_KERNEL),
    "top_n_every_key": OpCase(dict(top_n=200), kernels=CPU_ONLY),  # N >= Nk: no top-N at all
    "sinks": OpCase(mask="bool", sinks=True, kernels=NO_KERNEL),
    "sinks_gqa_causal_pv8": OpCase(dict(is_causal=True, pv_bits=8), sinks=True,
                                   shape=dict(heads=4, kv_heads=2, n_q=40, n_k=40),
                                   kernels=NO_KERNEL),
    "soft_cap": OpCase(dict(soft_cap=0.3), mask="float", bias="dense", kernels=NO_KERNEL),
    "soft_cap_sinks_causal": OpCase(dict(soft_cap=1.5, is_causal=True), sinks=True,
                                    shape=dict(n_q=40, n_k=40), kernels=NO_KERNEL),
    "tanh": OpCase(dict(binarizer="tanh", temperature=0.5), kernels=NO_KERNEL, naive=False),
    "scaled_tanh": OpCase(dict(binarizer="scaled_tanh", temperature=3.0, ste_clip=2.0),
                          kernels=NO_KERNEL, naive=False),
}


def names(kernel: Optional[str] = None, naive: Optional[bool] = None,
          exclude: tuple[str, ...] = ()) -> list[str]:
    """Case names in catalogue order: those ``kernel``'s suite takes (``"none"``: those no
    kernel implements), those the naive loop implements (``naive=True``), less ``exclude``."""
    return [name for name, case in CASES.items()
            if (kernel is None or (kernel in case.kernels if kernel != "none"
                                   else not case.kernels))
            and (naive is None or case.naive == naive) and name not in exclude]


def dead_rows(kwargs: dict, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
    """Bool ``[B, H, Nq]`` (broadcast to the output's leading dims): rows whose keys a bool mask
    hides all of, which give zeros; None without a bool mask."""
    mask = kwargs.get("attn_mask")
    if mask is None or mask.dtype != torch.bool:
        return None
    return (~mask).all(-1).expand(shape[:3])
