"""``AttentionOptions``: every non-tensor option of ``binary_attention`` in one frozen object.

What it does: holds the options (causal, softmax scale, scale mode, top-N, P/V bits, binarizer,
temperature, STE clip, logit soft-cap) as one frozen, hashable dataclass that checks them on
construction — the one place they are validated (ValueError/TypeError naming the option); the
optional tensors beside them (bias, mask, static scales, bias-table index, sinks) as the
``AttentionTensors`` tuple; and the argument order of the ``binattn::binary_attention`` custom
op: its schema text (:func:`op_schema`), ``(tensors, options)`` → the op's positional arguments
(:func:`op_args`) and back (:func:`from_op_args`). Every caller of the op (wrapper, reference,
kernels, export, the pass, hw_targets, training) reads options by name from these objects.

What it does not: check tensors against each other (shapes, dtypes, devices: ``validation``) or
hold any math (``reference``). Adding an option: DESIGN.md, "Adding an op option".
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch

SCALE_MODES = ("mean_abs", "static", "none")
BINARIZERS = ("sign", "tanh", "scaled_tanh")
PV_BITS = (None, 8)


class AttentionTensors(NamedTuple):
    """The optional tensor inputs of ``binary_attention`` (None where absent)."""

    bias: Optional[torch.Tensor] = None
    attn_mask: Optional[torch.Tensor] = None
    q_scale: Optional[torch.Tensor] = None
    k_scale: Optional[torch.Tensor] = None
    bias_index: Optional[torch.Tensor] = None
    sinks: Optional[torch.Tensor] = None


NO_TENSORS = AttentionTensors()


def _number(name: str, value: Any, none: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float{none}, got {type(value).__name__}")
    return float(value)


def _positive(name: str, value: Any) -> Optional[float]:
    """None, or a finite float > 0 (ValueError naming the option for NaN, ±Inf and <= 0)."""
    if value is None:
        return None
    number = _number(name, value, " or None")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
    return number


@dataclass(frozen=True)
class AttentionOptions:
    """The options of :func:`binattn.ops.binary_attention` (semantics there), checked here.

    Frozen and hashable: change one with :meth:`replace` (a new, checked object). Values are
    normalised (``is_causal`` a bool, ``scale``/``temperature``/``ste_clip`` floats).
    """

    is_causal: bool = False
    scale: Optional[float] = None
    scale_mode: str = "mean_abs"
    top_n: Optional[int] = None
    pv_bits: Optional[int] = None
    binarizer: str = "sign"
    temperature: float = 1.0
    ste_clip: float = 1.0
    soft_cap: Optional[float] = None

    def __post_init__(self) -> None:
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if self.top_n is not None and (isinstance(self.top_n, bool) or
                                       not isinstance(self.top_n, int) or self.top_n < 1):
            raise ValueError(f"top_n must be a positive int or None, got {self.top_n!r}")
        if self.pv_bits not in PV_BITS:
            raise ValueError(f"pv_bits must be None or 8, got {self.pv_bits!r}")
        if self.binarizer not in BINARIZERS:
            raise ValueError(f"binarizer must be one of {BINARIZERS}, got {self.binarizer!r}")
        temperature = _number("temperature", self.temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        set_field = functools.partial(object.__setattr__, self)
        set_field("temperature", temperature)
        set_field("ste_clip", _number("ste_clip", self.ste_clip))
        set_field("scale", _positive("scale", self.scale))
        set_field("soft_cap", _positive("soft_cap", self.soft_cap))
        set_field("is_causal", bool(self.is_causal))

    def replace(self, **changes: Any) -> "AttentionOptions":
        """A checked copy with ``changes`` (TypeError naming an unknown option)."""
        unknown = set(changes) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown attention option(s) {sorted(unknown)}; the options are "
                            f"{OPTION_NAMES}")
        return dataclasses.replace(self, **changes) if changes else self

    def check_tensors(self, tensors: AttentionTensors) -> None:
        """The checks between options and tensors: static scales present (and tensors), a
        bool or float mask, float sinks."""
        if self.scale_mode == "static" and (tensors.q_scale is None or
                                            tensors.k_scale is None):
            raise ValueError("scale_mode='static' needs q_scale and k_scale (calibrated per "
                             "layer)")
        for name in ("q_scale", "k_scale"):
            value = getattr(tensors, name)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor (0-d or broadcastable per head)")
        sinks = tensors.sinks
        if sinks is not None and not (isinstance(sinks, torch.Tensor) and
                                      sinks.is_floating_point()):
            got = sinks.dtype if isinstance(sinks, torch.Tensor) else type(sinks).__name__
            raise TypeError(f"sinks must be a float tensor [Hq] (one logit per query head), "
                            f"got {got}")
        mask = tensors.attn_mask
        if mask is not None and not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise TypeError(f"attn_mask must be bool (True = keep) or float (additive), got "
                            f"{mask.dtype}")


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(AttentionOptions))
TENSOR_NAMES = AttentionTensors._fields

# the op's arguments after q, k, v, in schema order, with their schema types; the order and
# types are fixed by saved programs (a new option goes last, with a default)
OP_ARGS = (("bias", "Tensor?"), ("attn_mask", "Tensor?"), ("is_causal", "bool"),
           ("scale", "float?"), ("scale_mode", "str"), ("q_scale", "Tensor?"),
           ("k_scale", "Tensor?"), ("top_n", "SymInt?"), ("pv_bits", "SymInt?"),
           ("binarizer", "str"), ("temperature", "float"), ("ste_clip", "float"),
           ("bias_index", "Tensor? bias_index=None"), ("sinks", "Tensor? sinks=None"),
           ("soft_cap", "float? soft_cap=None"))
OP_ARG_NAMES = tuple(name for name, _ in OP_ARGS)
assert set(OP_ARG_NAMES) == set(OPTION_NAMES) | set(TENSOR_NAMES)


# the backward op's arguments after the forward's (grad, q, k, v, then OP_ARGS), same rule:
# ``delta`` = rowsum(grad ∘ out) [B, Hq, Nq] float32, which a kernel may use instead of dP
BACKWARD_ARGS = (("delta", "Tensor? delta=None"),)


def op_schema(leading: str, returns: str, trailing: tuple = ()) -> str:
    """The schema text of an op taking ``leading`` (e.g. ``"Tensor q, Tensor k, Tensor v"``),
    then the options in :data:`OP_ARGS` order, then ``trailing`` (e.g. :data:`BACKWARD_ARGS`)."""
    options = ", ".join(kind if " " in kind else f"{kind} {name}"
                        for name, kind in OP_ARGS + tuple(trailing))
    return f"({leading}, {options}) -> {returns}"


def split_backward_args(args: tuple) -> tuple[tuple, Optional[torch.Tensor]]:
    """The backward op's arguments after grad, q, k, v → (the forward's arguments after q, k,
    v; ``delta`` or None). The dispatcher passes ``delta`` only when a caller gave it."""
    if len(args) > len(OP_ARG_NAMES):
        return tuple(args[:len(OP_ARG_NAMES)]), args[len(OP_ARG_NAMES)]
    return tuple(args), None


def op_args(tensors: AttentionTensors, options: AttentionOptions) -> tuple:
    """The op's positional arguments after q, k, v (schema order)."""
    return tuple(getattr(tensors, name) if name in TENSOR_NAMES else getattr(options, name)
                 for name in OP_ARG_NAMES)


_TENSOR_AT = tuple(OP_ARG_NAMES.index(name) for name in TENSOR_NAMES)
_OPTION_AT = tuple(OP_ARG_NAMES.index(name) for name in OPTION_NAMES)


@functools.lru_cache(maxsize=256)
def _options_of(values: tuple) -> AttentionOptions:
    return AttentionOptions(*values)


def from_op_args(args: tuple, kwargs: Optional[dict] = None) -> tuple[AttentionTensors,
                                                                      AttentionOptions]:
    """``(tensors, options)`` from the op's arguments after q, k, v (positional, then by name;
    ``bias_index`` may be left out, as programs saved before it do). Options are checked once
    per distinct set of values (cached), so the op's own calls pay a tuple lookup."""
    if kwargs or len(args) != len(OP_ARG_NAMES):
        args = _all_args(args, kwargs or {})
    values = tuple([args[i] for i in _OPTION_AT])
    try:
        options = _options_of(values)
    except TypeError:   # an unhashable value: checked without the cache
        options = AttentionOptions(*values)
    return AttentionTensors._make([args[i] for i in _TENSOR_AT]), options


def _all_args(args: tuple, kwargs: dict) -> tuple:
    """Every argument after q, k, v in schema order, defaults where left out."""
    if len(args) > len(OP_ARG_NAMES):
        raise TypeError(f"binary_attention takes {len(OP_ARG_NAMES)} arguments after q, k, v, "
                        f"got {len(args)}")
    named = dict(zip(OP_ARG_NAMES, args))
    for name, value in kwargs.items():
        if name not in OP_ARG_NAMES or name in named:
            raise TypeError(f"binary_attention: unexpected or repeated argument {name!r}")
        named[name] = value
    defaults = dict(zip(OPTION_NAMES, dataclasses.astuple(AttentionOptions())))
    return tuple(named.get(name, defaults.get(name)) for name in OP_ARG_NAMES)


def op_grads(**grads: Optional[torch.Tensor]) -> tuple:
    """The gradients of the op's arguments after q, k, v: ``grads`` by name, None elsewhere."""
    unknown = set(grads) - set(OP_ARG_NAMES)
    if unknown:
        raise TypeError(f"no op argument(s) {sorted(unknown)}")
    return tuple(grads.get(name) for name in OP_ARG_NAMES)


def option_properties(cls: type, names: tuple[str, ...] = (), *,
                      attribute: str = "options") -> type:
    """Give ``cls`` (which holds an ``AttentionOptions`` in ``attribute``) one property per
    option name (default: every option): reading it reads the option, setting it replaces the
    options by a checked copy. For holders whose users read and set options as attributes."""
    def make(name: str) -> property:
        def get(holder: Any) -> Any:
            return getattr(getattr(holder, attribute), name)

        def set_(holder: Any, value: Any) -> None:
            setattr(holder, attribute, getattr(holder, attribute).replace(**{name: value}))

        return property(get, set_, doc=f"``{attribute}.{name}``; setting it replaces "
                                       f"``{attribute}``")

    for name in names or OPTION_NAMES:
        setattr(cls, name, make(name))
    return cls


def split_keywords(**keywords: Any) -> tuple[AttentionTensors, AttentionOptions]:
    """``(tensors, options)`` from ``binary_attention``'s keyword arguments (any subset)."""
    tensors = AttentionTensors(**{n: keywords.pop(n) for n in TENSOR_NAMES if n in keywords})
    return tensors, AttentionOptions().replace(**keywords)
