"""What the drop-ins share: the options of a drop-in attention layer, the per-layer learned state
(static q/k scales, a learned bias) and the call of :func:`binattn.ops.binary_attention`.

What it does: validates options (errors name the option), holds one attention layer's state as
an ``nn.Module`` (so it trains, moves with ``.to()`` and is saved in the model's state_dict), and
describes that state as a plain dict (a *spec*) so a model config can rebuild it before its
tensors load. Attention dropout runs on the reference op's probabilities (the fused op has no
dropout). What it does not: import transformers or diffusers, find layers or masks
(``hf.py``, ``diffusers.py``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import reference, validation
from ..ops.bias import (DenseBias, HeadBias, RelPosBias, SequenceRelPosBias,
                        sequence_relpos_index)
from ..ops.options import AttentionOptions, AttentionTensors, option_properties

DROPOUT_MODES = ("apply", "ignore")
ATTACH_BIASES = ("head", "relpos_1d", None)


LAYER_OPTIONS = ("scale_mode", "top_n", "pv_bits", "binarizer", "temperature", "ste_clip")


class BinattnAttentionConfig:
    """Options of a binattn drop-in attention layer (see :func:`binattn.ops.binary_attention`).

    Keywords:
        scale_mode: ``"mean_abs"`` (default), ``"static"`` (needs each layer's calibrated
            ``q_scale``/``k_scale``, e.g. from :func:`binattn.hf.load_binarized`) or ``"none"``.
        top_n, pv_bits, binarizer, temperature, ste_clip: the op's options, held (and checked)
            as one :class:`~binattn.ops.options.AttentionOptions` in ``attention``; each is also
            an attribute. Causality and the scale come from the layer at each call.
        dropout: ``"apply"`` runs attention dropout in training (on the reference op's
            probabilities: an N×N tensor, slower), ``"ignore"`` keeps the fused op and drops none.
        bias: ``"head"`` gives every layer a learned per-head bias, ``"relpos_1d"`` a learned
            1-D relative-position table per head (offsets within ±32 tokens, any length; both
            zero init) when attached; 2-D relative-position and dense biases come from a
            binarized model (:func:`binattn.hf.load_binarized`), as their shape depends on the
            token grid.
    """

    def __init__(self, *, dropout: str = "apply", bias: Optional[str] = None,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(LAYER_OPTIONS))
        if unknown:
            raise ValueError(f"unsupported binattn option(s) {unknown}; supported: "
                             f"{sorted(LAYER_OPTIONS + ('dropout', 'bias'))}")
        self.attention = AttentionOptions(**options)
        if dropout not in DROPOUT_MODES:
            raise ValueError(f"dropout must be one of {DROPOUT_MODES}, got {dropout!r}")
        if bias not in ATTACH_BIASES:
            raise ValueError(f"bias must be one of {ATTACH_BIASES}, got {bias!r}: 2-D "
                             "relative-position and dense biases need the token grid, so they "
                             "come from a binarized model (binattn.hf.load_binarized)")
        self.dropout, self.bias = dropout, bias

    def options(self, is_causal: bool = False,
                scale: Optional[float] = None) -> AttentionOptions:
        """The op options of a layer with this config (static scales are the layer's state)."""
        return self.attention.replace(is_causal=is_causal, scale=scale)

    @classmethod
    def coerce(cls, options: Any) -> "BinattnAttentionConfig":
        """``options`` as a config: None (defaults), a config, or a dict of its keywords (an
        unknown key raises ValueError naming it)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            return cls(**dict(options))
        raise TypeError(f"options must be a BinattnAttentionConfig, a dict or None, got "
                        f"{type(options).__name__}")

    def to_dict(self) -> dict:
        """The keywords that rebuild this config (what a model's config.json stores)."""
        return {**{n: getattr(self.attention, n) for n in LAYER_OPTIONS},
                "dropout": self.dropout, "bias": self.bias}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BinattnAttentionConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"BinattnAttentionConfig({args})"


option_properties(BinattnAttentionConfig, LAYER_OPTIONS, attribute="attention")


def attached_bias(kind: Optional[str], heads: int) -> Optional[nn.Module]:
    """The zero-init bias module that ``BinattnAttentionConfig(bias=kind)`` attaches to a layer
    of ``heads`` query heads (None for no bias)."""
    if kind == "head":
        return HeadBias(heads)
    if kind == "relpos_1d":
        return SequenceRelPosBias(heads)
    return None


def bias_spec(bias: Optional[nn.Module]) -> Optional[dict]:
    """A plain description of a learned bias module, enough to rebuild it empty."""
    if bias is None:
        return None
    if isinstance(bias, RelPosBias):
        return {"kind": "relpos", "heads": int(bias.table.shape[1]), "grid": list(bias.grid),
                "num_prefix_tokens": int(bias.num_prefix_tokens)}
    if isinstance(bias, SequenceRelPosBias):
        return {"kind": "relpos_1d", "heads": int(bias.table.shape[1]),
                "max_distance": int(bias.max_distance)}
    if isinstance(bias, DenseBias):
        return {"kind": "dense", "shape": list(bias.table.shape)}
    if isinstance(bias, HeadBias):
        return {"kind": "head", "heads": int(bias.table.shape[0])}
    raise TypeError(f"bias module {type(bias).__name__} is not one binattn can describe "
                    "(RelPosBias, SequenceRelPosBias, DenseBias, HeadBias)")


def bias_from_spec(spec: Optional[Mapping]) -> Optional[nn.Module]:
    if spec is None:
        return None
    kind = spec.get("kind")
    if kind == "relpos":
        return RelPosBias(int(spec["heads"]), tuple(spec["grid"]), int(spec["num_prefix_tokens"]))
    if kind == "relpos_1d":
        return SequenceRelPosBias(int(spec["heads"]), int(spec["max_distance"]))
    if kind == "dense":
        return DenseBias(*(int(s) for s in spec["shape"]))
    if kind == "head":
        return HeadBias(int(spec["heads"]))
    raise ValueError(f"unknown bias kind {kind!r} in a binattn layer spec")


class BinattnLayerState(nn.Module):
    """One attention layer's binattn state: options, static scales, learned bias.

    Attached as the submodule ``binattn`` of the layer's attention module, so its tensors are in
    the model's state_dict (``<attention path>.binattn.q_scale``, ``...binattn.bias.table``).
    """

    def __init__(self, options: Optional[BinattnAttentionConfig] = None, *,
                 bias: Optional[nn.Module] = None, q_scale: Optional[torch.Tensor] = None,
                 k_scale: Optional[torch.Tensor] = None):
        super().__init__()
        self.options = BinattnAttentionConfig.coerce(options)
        self.register_buffer("q_scale", q_scale)
        self.register_buffer("k_scale", k_scale)
        self.bias = bias

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())

    def spec(self) -> dict:
        """Options, bias and static-scale shapes as JSON-able data (for a model config)."""
        return {"options": self.options.to_dict(), "bias": bias_spec(self.bias),
                "q_scale": None if self.q_scale is None else list(self.q_scale.shape),
                "k_scale": None if self.k_scale is None else list(self.k_scale.shape)}

    @classmethod
    def from_spec(cls, spec: Mapping) -> "BinattnLayerState":
        """An empty state of the described shapes (its tensors then load from a state_dict)."""
        scales = {name: None if spec.get(name) is None else torch.ones(spec[name])
                  for name in ("q_scale", "k_scale")}
        return cls(spec.get("options"), bias=bias_from_spec(spec.get("bias")), **scales)


def _layer_bias(module: Optional[nn.Module], n_q: int, n_k: int, table_ok: bool
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(bias, bias_index)`` of a layer's learned bias: a relative-position table and its index
    (looked up inside the op) where ``table_ok``, else the dense bias it stands for."""
    if module is None:
        return None, None
    if isinstance(module, RelPosBias):
        return (module.table, module.index) if table_ok else (module(), None)
    if isinstance(module, SequenceRelPosBias):
        if table_ok:
            return module.table, sequence_relpos_index(module.table, n_q, n_k)
        return module(n_q, n_k), None
    return module(), None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              options: BinattnAttentionConfig, state: Optional[BinattnLayerState] = None, *,
              attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
              scale: Optional[float] = None, extra_bias: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0, sinks: Optional[torch.Tensor] = None,
              soft_cap: Optional[float] = None) -> torch.Tensor:
    """Binary attention of ``q [B, Hq, Nq, D]``, ``k``/``v [B, Hkv, Nk, D]`` with a layer's
    options and state; ``[B, Hq, Nq, Dv]`` (laid out as ``[B, Nq, Hq, Dv]`` by the fused op).
    ``extra_bias`` (e.g. T5's position bias) adds to the layer's learned bias; ``sinks``
    (per-head logits, GPT-OSS) and ``soft_cap`` (Gemma-2) go to the op as they are."""
    q_scale = k_scale = bias = bias_index = None
    if state is not None:
        q_scale, k_scale = state.q_scale, state.k_scale
        bias, bias_index = _layer_bias(state.bias, q.shape[-2], k.shape[-2],
                                       table_ok=extra_bias is None)
    if extra_bias is not None:
        bias = extra_bias if bias is None else bias + extra_bias
    if options.scale_mode == "static" and (q_scale is None or k_scale is None):
        raise ValueError("scale_mode='static' needs this layer's calibrated q_scale and k_scale; "
                         "load them from a binarized model (binattn.hf.load_binarized) or use "
                         "scale_mode='mean_abs' or 'none'")
    tensors = AttentionTensors(bias=bias, attn_mask=attn_mask, q_scale=q_scale,
                               k_scale=k_scale, bias_index=bias_index, sinks=sinks)
    op_options = options.options(bool(is_causal), scale).replace(soft_cap=soft_cap)
    if dropout_p > 0.0 and options.dropout == "apply":
        if options.pv_bits is not None:
            raise ValueError(f"attention dropout ({dropout_p}) with pv_bits={options.pv_bits} is "
                             "not supported: set the option dropout='ignore', or the model's "
                             "attention dropout to 0")
        validation.check_attention_inputs(q, k, v)
        _, probs = reference.binary_attention(q, k, v, tensors, op_options, return_probs=True)
        values = reference.expand_kv_heads(v.to(probs.dtype), q.shape[1])
        return (F.dropout(probs, dropout_p, training=True) @ values).to(v.dtype)
    return ops.binary_attention_with(q, k, v, tensors, op_options)
