"""Argument checks for binattn's public ops: clear ValueError/TypeError naming the argument.

What it does: rank, dtype, shape and GQA checks of the tensors, run once in the Python wrappers
before a custom op is called — from shapes, dtypes and devices alone, so they never read the
device — plus the opt-in data checks. What it does not: check options (``options``: the one
place they are checked), any math (``reference``) or dispatch.

NaN policy (README): a data check needs the values, and reading them back is a host sync that
drains the launch queue (three per layer cost a binarized ViT-B 2.5 ms on the H100). So a
CUDA call and a binarized model's sites (``binary_attention_with``, any device) read nothing by
default — a direct ``binary_attention`` call on CPU tensors does check (no queue to drain).
Unchecked, a NaN or ±Inf in q or k makes the scale of its (b, h) NaN in every scale mode
(``reference.magnitude_scale``), one in v, the bias or the mask reaches the output through the
softmax and P·V — the output is NaN, never a finite value built from sign(NaN), and
training stops with a message at its next loss read. ``check_finite=True`` on a call, or
:func:`data_checks` / ``BINATTN_DATA_CHECKS=1`` for every call (binarized models included),
raises ``ValueError`` naming the first non-finite argument instead (eager only). A bias-table
index is range-checked once per tensor version (an index out of range would read outside the
table in the kernel), so a model's fixed index costs one read in its first call, none after.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Iterator, Optional

import torch


_local = threading.local()


def data_checks_enabled() -> bool:
    """Whether calls that leave ``check_finite`` unset read their data to check it."""
    flag = getattr(_local, "data_checks", None)
    if flag is not None:
        return flag
    return os.environ.get("BINATTN_DATA_CHECKS", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def data_checks(enabled: bool = True) -> Iterator[None]:
    """Inside this block every binattn op call (a binarized model's too) checks its data for
    NaN/Inf and raises ``ValueError`` naming the argument (one host sync per check)."""
    previous = getattr(_local, "data_checks", None)
    _local.data_checks = bool(enabled)
    try:
        yield
    finally:
        _local.data_checks = previous


def resolve_check_finite(check_finite: Optional[bool]) -> bool:
    """An explicit ``check_finite`` wins; None follows :func:`data_checks_enabled`."""
    if check_finite is None:
        return data_checks_enabled()
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True, False or None, got {check_finite!r}")
    return check_finite


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_tracing(*tensors: torch.Tensor) -> bool:
    """True under torch.compile/export or when any tensor is fake/meta (data not available)."""
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return any(t is not None and (t.is_meta or is_fake(t)) for t in tensors)


def check_float(name: str, x: torch.Tensor) -> None:
    """x must be a floating tensor binattn computes with."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_finite(name: str, x: Optional[torch.Tensor], allow_inf: bool = False) -> None:
    """Raise ValueError if x holds NaN or (unless ``allow_inf``: a mask's −inf) Inf; eager
    only, one host sync. One streaming read (a float32/float64 sum: not NaN unless a term is
    NaN or infinities of both signs meet, finite only if every term is) decides the common
    case; the exact scan runs only when that sum is not."""
    if x is None or x.numel() == 0 or is_tracing(x):
        return
    if not x.is_floating_point():
        return
    total = x.sum(dtype=_sum_dtype(x))   # one streaming read: NaN propagates, Inf persists
    if bool(~torch.isnan(total) if allow_inf else torch.isfinite(total)):
        return   # the exact scan below runs only for a bad value or a sum that overflowed
    bad = torch.isnan(x) if allow_inf else ~torch.isfinite(x)
    if bool(bad.any()):
        kind = "NaN" if allow_inf or bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{name} contains {kind}; binary attention needs finite inputs "
                         "(sign of NaN is undefined)")


def _sum_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 sums of float64 tensors, float32 sums of the rest (no float16 overflow)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_sign_pack_input(x: torch.Tensor) -> None:
    """sign_pack takes a float tensor with at least one dim and a non-empty last dim."""
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (the packed dim D is the last one)")
    if x.shape[-1] == 0:
        raise ValueError("x has an empty last dimension D; there is nothing to pack")


def check_packed(name: str, bits: torch.Tensor, head_dim: int) -> None:
    """Packed words: int32, rank >= 2, last dim = ceil(D/32)."""
    if not isinstance(bits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(bits).__name__}")
    if bits.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 packed words from sign_pack, got {bits.dtype}")
    if bits.dim() < 2:
        raise ValueError(f"{name} must have shape [..., N, W], got rank {bits.dim()}")
    words = (head_dim + 31) // 32
    if bits.shape[-1] != words:
        raise ValueError(f"{name} has {bits.shape[-1]} words per row but D={head_dim} needs "
                         f"{words}")


def check_popcount_inputs(q_bits: torch.Tensor, k_bits: torch.Tensor, head_dim: int) -> None:
    """Both packed with the same D, batch dims broadcastable."""
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"D must be a positive int, got {head_dim!r}")
    check_packed("q_bits", q_bits, head_dim)
    check_packed("k_bits", k_bits, head_dim)
    try:
        torch.broadcast_shapes(q_bits.shape[:-2], k_bits.shape[:-2])
    except RuntimeError as err:
        raise ValueError(f"q_bits batch dims {tuple(q_bits.shape[:-2])} and k_bits batch dims "
                         f"{tuple(k_bits.shape[:-2])} do not broadcast") from err


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q, k, v: float of one dtype, 4-D [B, H, N, D], same B, matching D, GQA-compatible
    heads, N > 0."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, D] (or 3-D [B, N, D]), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[-2] == 0:
            raise ValueError(f"{name} has an empty sequence dimension N")
        if x.shape[-1] == 0:
            raise ValueError(f"{name} has an empty head dimension D")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must have one dtype, got q {q.dtype}, k {k.dtype}, "
                        f"v {v.dtype} (cast them to one)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"D mismatch: q has D={q.shape[-1]} but k has D={k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must share Nk: k has {k.shape[-2]}, v has {v.shape[-2]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same heads: {k.shape[1]} vs {v.shape[1]}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch mismatch: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"GQA: q heads ({q.shape[1]}) must be a multiple of k/v heads "
                         f"({k.shape[1]})")


def check_sinks(sinks: Optional[torch.Tensor], q: torch.Tensor) -> None:
    """Attention sinks: a float tensor ``[Hq]`` (one logit per query head) on q's device (its
    dtype is checked with the options, ``AttentionOptions.check_tensors``)."""
    if sinks is None:
        return
    if tuple(sinks.shape) != (q.shape[1],):
        raise ValueError(f"sinks must have shape [Hq] = [{q.shape[1]}] (one logit per query "
                         f"head), got {tuple(sinks.shape)}")
    if sinks.device != q.device:
        raise ValueError(f"sinks is on {sinks.device} but q is on {q.device}")


def check_broadcast(name: str, x: Optional[torch.Tensor], target: tuple[int, ...]) -> None:
    """x (bias or mask) must broadcast to [B, H, Nq, Nk]."""
    if x is None:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(x).__name__}")
    if x.dim() > 4:
        raise ValueError(f"{name} has rank {x.dim()}; it must broadcast to {target}")
    try:
        if torch.broadcast_shapes(x.shape, target) != torch.Size(target):
            raise RuntimeError
    except RuntimeError as err:
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to "
                         f"[B, H, Nq, Nk] = {target}") from err


INDEX_DTYPES = (torch.int32, torch.int64)


def check_bias_table(table: Optional[torch.Tensor], index: torch.Tensor,
                     target: tuple[int, ...], check_values: bool = True) -> None:
    """``bias`` as a table ``[T, Ht]`` (Ht = 1 or Hq) and ``bias_index [Nq, Nk]`` of ints in
    [0, T) (the range is checked in eager mode with ``check_values``)."""
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"bias_index must be a torch.Tensor, got {type(index).__name__}")
    if table is None:
        raise ValueError("bias_index needs bias: the table [T, H] it indexes")
    check_float("bias", table)
    _, heads, n_q, n_k = target
    if table.dim() != 2 or table.shape[0] == 0 or table.shape[1] not in (1, heads):
        raise ValueError(f"with bias_index, bias must be a table [T, H] with T >= 1 and H = 1 "
                         f"or {heads} (the query heads), got shape {tuple(table.shape)}")
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"bias_index must be int32 or int64, got {index.dtype}")
    if tuple(index.shape) != (n_q, n_k):
        raise ValueError(f"bias_index must have shape [Nq, Nk] = {(n_q, n_k)}, got "
                         f"{tuple(index.shape)}")
    if index.device != table.device:
        raise ValueError(f"bias_index is on {index.device} but the table is on {table.device}")
    checked_rows = INDEX_ROWS.get(index) if check_values else None
    if check_values and not is_tracing(index) and (checked_rows is None or
                                                   table.shape[0] < checked_rows):
        low, high = torch.stack(tuple(torch.aminmax(index))).tolist()  # one reduction, one sync
        if low < 0 or high >= table.shape[0]:
            raise ValueError(f"bias_index holds {low if low < 0 else high}, outside the table's "
                             f"rows [0, {table.shape[0]})")
        INDEX_ROWS.put(index, table.shape[0])


class FoundOnce:
    """A fact about a tensor's values, found once (one host read) and remembered for this very
    tensor while its version counter is unchanged (an in-place write forgets it; so does the
    tensor's death). For values a model keeps fixed: a relative-position index, static scales."""

    def __init__(self) -> None:
        self._facts: dict[int, tuple] = {}  # id -> (weakref, version, fact)

    def get(self, t: torch.Tensor):
        """The fact recorded for ``t`` as it is now, else None."""
        entry = self._facts.get(id(t))
        if entry is None or entry[0]() is not t or entry[1] != t._version:
            return None
        return entry[2]

    def put(self, t: torch.Tensor, fact) -> None:
        key = id(t)
        forget = lambda _ref, key=key: self._facts.pop(key, None)  # noqa: E731
        self._facts[key] = (weakref.ref(t, forget), t._version, fact)


INDEX_ROWS = FoundOnce()  # bias_index -> the table rows it was found within
