"""diffusers drop-in: an attention processor that runs 1-bit query/key attention.

What it does: :class:`BinattnAttnProcessor` wraps an attention processor (the layer's own, or
its class's default) and runs it with every ``F.scaled_dot_product_attention`` call it makes
replaced by :func:`binattn.ops.binary_attention` (a ``TorchFunctionMode`` active only during
that processor call), so the processor's own projections, norms, RoPE, joint (SD3/Flux)
concatenation and masks stay exactly diffusers' code. That covers the processors that call SDPA
themselves (``AttnProcessor2_0``, ``JointAttnProcessor2_0``: DiT, SD3, PixArt, ...) and those that
go through ``dispatch_attention_fn`` with the native backend (Flux and the newer models).
:func:`apply` gives every attention layer its own processor (own options, static q/k scales and
learned bias, saved in the model's state_dict under ``<layer>.processor.binattn.``);
``model.set_attn_processor(BinattnAttnProcessor())`` shares one. Gradients flow through the op's
STE, so the wrapped model trains.

What it does not: a dispatch backend (``set_attention_backend("binattn")``: diffusers 0.42's
backend registry is a closed enum), processors that never call SDPA (flash, sage, xformers
backends, the pre-2.0 ``AttnProcessor``: a clear error says so), or IP-adapter kwargs that
diffusers filters by the processor's signature (``ip_hidden_states``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._site import BinattnAttentionConfig, BinattnLayerState, attached_bias, attention

__all__ = ["BinattnAttentionConfig", "BinattnAttnProcessor", "apply", "remove",
           "attention_layers", "default_processor"]

_UNSET: Any = object()


class _SdpaToBinary(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to binary attention while active."""

    def __init__(self, options: BinattnAttentionConfig, state: BinattnLayerState):
        super().__init__()
        self.options, self.state, self.calls = options, state, 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.calls += 1
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                 "enable_gqa")
        bound = dict(zip(names, args), **kwargs)
        return attention(bound["query"], bound["key"], bound["value"], self.options, self.state,
                         attn_mask=bound.get("attn_mask"),
                         is_causal=bool(bound.get("is_causal", False)),
                         scale=bound.get("scale"), dropout_p=float(bound.get("dropout_p", 0.0)))


def default_processor(attn: nn.Module) -> Callable:
    """The processor a diffusers attention module uses by default (what a base-less
    :class:`BinattnAttnProcessor` wraps): its class's ``_default_processor_cls`` (Flux and the
    newer ``AttentionModuleMixin`` classes), ``JointAttnProcessor2_0`` for SD3-style joint
    attention (``context_pre_only`` set), else ``AttnProcessor2_0``."""
    cls = getattr(type(attn), "_default_processor_cls", None)
    if cls is not None:
        return cls()
    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
    if getattr(attn, "context_pre_only", None) is not None:
        return JointAttnProcessor2_0()
    return AttnProcessor2_0()


def _guess_misses(attn: nn.Module, context: Any, rotary: Any) -> Optional[str]:
    """What a layer of diffusers' generic ``Attention`` class gets that its guessed default
    processor (:func:`default_processor`) would not use, or None: rotary embeddings (neither
    ``AttnProcessor2_0`` nor ``JointAttnProcessor2_0`` applies them), or context tokens for a
    layer that is neither cross- nor joint attention."""
    if rotary is not None:
        return "gets rotary embeddings"
    joint = getattr(attn, "context_pre_only", None) is not None
    if context is not None and not joint and not getattr(attn, "is_cross_attention", True):
        return "gets encoder_hidden_states but is not a cross-attention layer"
    return None


class BinattnAttnProcessor(nn.Module):
    """A diffusers attention processor running binary attention inside ``base``.

    Args:
        options: :class:`BinattnAttentionConfig` or a dict of its fields (scale_mode, top_n,
            pv_bits, binarizer, ...; an unknown key raises ValueError naming it).
        base: the processor to wrap (it must call SDPA, directly or through diffusers' native
            dispatch backend); None: each layer's default (:func:`default_processor`).

    Its ``binattn`` submodule (:class:`BinattnLayerState`) holds static q/k scales and a
    learned bias (``options={"bias": "head"}`` or ``"relpos_1d"`` needs ``num_heads``).
    """

    def __init__(self, options: Union[BinattnAttentionConfig, Mapping, None] = None,
                 base: Optional[Callable] = None, *, num_heads: Optional[int] = None):
        super().__init__()
        opts = BinattnAttentionConfig.coerce(options)
        if opts.bias is not None and num_heads is None:
            raise ValueError(f"options bias={opts.bias!r} needs num_heads "
                             "(binattn.diffusers.apply passes each layer's)")
        bias = attached_bias(opts.bias, int(num_heads)) if opts.bias is not None else None
        self.binattn = BinattnLayerState(opts, bias=bias)
        self.base = base
        self._defaults: dict[type, Callable] = {}

    @property
    def options(self) -> BinattnAttentionConfig:
        return self.binattn.options

    def _base_for(self, attn: nn.Module, context: Any, rotary: Any) -> Callable:
        if self.base is not None:
            return self.base
        if type(attn) not in self._defaults:
            self._defaults[type(attn)] = default_processor(attn)
        reason = None
        if getattr(type(attn), "_default_processor_cls", None) is None:  # a guess: check it
            reason = _guess_misses(attn, context, rotary)
        if reason:
            raise ValueError(
                f"BinattnAttnProcessor() without base cannot tell which processor this "
                f"{type(attn).__name__} layer ran before set_attn_processor replaced it: it "
                f"{reason}, which the default processor would ignore, so the model ran its own "
                "processor (HunyuanVideo, CogVideoX, ...). Use binattn.diffusers.apply(model), "
                "which wraps each layer's own processor, or BinattnAttnProcessor(base=...)")
        return self._defaults[type(attn)]

    # diffusers passes a processor only the keyword arguments its __call__ names (the older
    # ``Attention``); newer attention classes pass their arguments positionally, under their own
    # names (Flux: ``image_rotary_emb``, Wan: ``rotary_emb``): positions reach ``base`` as such
    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any,
                 encoder_hidden_states: Any = _UNSET, attention_mask: Any = _UNSET,
                 image_rotary_emb: Any = _UNSET, temb: Any = _UNSET, **kwargs: Any) -> Any:
        named = {"encoder_hidden_states": encoder_hidden_states,
                 "attention_mask": attention_mask, "image_rotary_emb": image_rotary_emb,
                 "temb": temb}
        kwargs.update({k: v for k, v in named.items() if v is not _UNSET})
        return super().__call__(attn, hidden_states, *args, **kwargs)

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any,
                **kwargs: Any) -> Any:
        context = args[0] if args else kwargs.get("encoder_hidden_states")
        rotary = args[2] if len(args) > 2 else kwargs.get("image_rotary_emb")
        base = self._base_for(attn, context, rotary)
        if getattr(base, "_attention_backend", None) not in (None, "native"):
            raise ValueError(f"{type(base).__name__} uses the attention backend "
                             f"{base._attention_backend!r}; binattn replaces SDPA, so it needs "
                             "the 'native' backend (or None)")
        mode = _SdpaToBinary(self.options, self.binattn)
        with mode:
            out = base(attn, hidden_states, *args, **kwargs)
        if mode.calls == 0:
            raise RuntimeError(f"{type(base).__name__} made no scaled_dot_product_attention call "
                               f"for {type(attn).__name__}, so nothing ran as binary attention: "
                               "binattn wraps SDPA-based processors only")
        return out

    def extra_repr(self) -> str:
        return f"base={type(self.base).__name__ if self.base is not None else 'default'}"


def _heads(attn: nn.Module) -> Optional[int]:
    heads = getattr(attn, "heads", None)
    return int(heads) if isinstance(heads, int) else None


def attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The diffusers attention modules of ``model`` (those with ``set_processor``), by path."""
    return {name: m for name, m in model.named_modules()
            if callable(getattr(m, "set_processor", None)) and hasattr(m, "processor")}


def apply(model: nn.Module, options: Union[BinattnAttentionConfig, Mapping, None] = None
          ) -> nn.Module:
    """Wrap each attention layer's current processor in its own :class:`BinattnAttnProcessor`
    (any diffusers model, also those without ``set_attn_processor`` such as DiT); a layer
    already wrapped is re-wrapped with the new options. Returns ``model``."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no diffusers attention module (one with "
                         "set_processor): pass a diffusers model, e.g. pipe.transformer")
    for attn in layers.values():
        proc = attn.processor
        base = proc.base if isinstance(proc, BinattnAttnProcessor) else proc
        attn.set_processor(BinattnAttnProcessor(options, base, num_heads=_heads(attn)))
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: every layer gets back the processor its BinattnAttnProcessor wraps
    (its default where it wrapped none). Returns ``model``."""
    for attn in attention_layers(model).values():
        proc = attn.processor
        if isinstance(proc, BinattnAttnProcessor):
            attn.set_processor(proc.base if proc.base is not None else default_processor(attn))
    return model
