"""transformers drop-in: ``attn_implementation="binattn"`` runs 1-bit query/key attention.

What it does: :func:`register` (run on import) adds ``"binattn"`` to transformers'
``AttentionInterface`` (the function :func:`binattn_attention_forward`) and to its
``AttentionMaskInterface`` (SDPA's mask builder: bool masks, True = keep, for padding, causal and
sliding windows; None where ``is_causal`` says it all). So after ``import binattn.hf``,
``AutoModel.from_pretrained(path, attn_implementation="binattn")`` and
``model.set_attn_implementation("binattn")`` run :func:`binattn.ops.binary_attention` in every
attention layer, with GQA, causal/padding/sliding-window masks, T5-style position biases and
attention dropout in training (gradients through the op's STE).

Options (:class:`BinattnAttentionConfig`: scale_mode, top_n, pv_bits, binarizer, ...) come from,
first to last: the layer's attached state (:func:`attach`, :func:`load_binarized`), the model
config's ``binattn`` entry (saved in config.json by ``save_pretrained``), ``register(options)``.
Learned per-layer state (static q/k scales, a learned bias) lives in a ``binattn`` submodule of
each attention module, so it trains with the model and is saved in its state_dict;
:func:`load_binarized` copies it from a ``binattn.binarize()``-d (and trained) model, and
``attach(model, checkpoint=path)`` loads it back after ``from_pretrained``.

Soft-capping (``softcap``, Gemma-2) and attention sinks (``s_aux``/``sinks``, GPT-OSS) go to
the op as its ``soft_cap`` option and ``sinks`` tensor (the kernels do not build them: those
layers run the reference op, and say so). What it does not: return attention weights (None,
as SDPA). With ``scale_mode="mean_abs"`` the op's per-(b, h) scale averages |q| and |k| over every
token, padded and future ones included (as ``binattn.binarize()`` does), so padding and later
tokens shift the softmax temperature of real rows; use "static" or "none" where they must change
nothing (decoders, padded batches). Errors name the unsupported argument.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._site import BinattnAttentionConfig, BinattnLayerState, attached_bias, attention

__all__ = ["NAME", "BinattnAttentionConfig", "BinattnLayerState", "register",
           "binattn_attention_forward", "attention_modules", "attach", "load_binarized"]

NAME = "binattn"
CONFIG_KEY = "binattn"     # model.config.binattn = {"options": {...}, "layers": {path: spec}}
STATE_NAME = "binattn"     # <attention module>.binattn: its BinattnLayerState
UNSUPPORTED_KWARGS: dict[str, str] = {}  # transformers' kwargs this drop-in refuses, by name

_defaults = BinattnAttentionConfig()
_uses_interface: dict[type, bool] = {}


def register(options: Union[BinattnAttentionConfig, Mapping, None] = None) -> None:
    """Register ``"binattn"`` with transformers (attention function and mask builder).

    ``options`` become the defaults of layers with no attached state and no ``binattn`` entry
    in their model's config; None keeps the current ones (initially the op's defaults).
    """
    global _defaults
    if options is not None:
        _defaults = BinattnAttentionConfig.coerce(options)
    AttentionInterface.register(NAME, binattn_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def _config_entry(module: nn.Module) -> Optional[Mapping]:
    entry = getattr(getattr(module, "config", None), CONFIG_KEY, None)
    return entry if isinstance(entry, Mapping) else None


def layer_options(module: nn.Module) -> tuple[BinattnAttentionConfig, Optional[BinattnLayerState]]:
    """The options and attached state an attention module runs with."""
    state = module._modules.get(STATE_NAME)
    if isinstance(state, BinattnLayerState):
        return state.options, state
    entry = _config_entry(module)
    if entry is None:
        return _defaults, None
    if entry.get("layers"):
        raise ValueError(f"the model config's '{CONFIG_KEY}' entry lists learned per-layer state "
                         f"(biases, static scales) but {type(module).__name__} has none "
                         "attached: call binattn.hf.attach(model, checkpoint=path) after "
                         "from_pretrained")
    return BinattnAttentionConfig.coerce(entry.get("options")), None


def binattn_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                              dropout: float = 0.0, scaling: Optional[float] = None,
                              is_causal: Optional[bool] = None,
                              position_bias: Optional[torch.Tensor] = None,
                              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query [B, Hq, Nq, D]``, ``key``/``value
    [B, Hkv, Nk, D]``, the mask from SDPA's mask builder; returns ``([B, Nq, Hq, Dv], None)``."""
    for name, what in UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"attn_implementation='binattn' does not support {what} "
                             f"(argument {name!r} of {type(module).__name__}); use 'sdpa' or "
                             "'eager' for this model")
    options, state = layer_options(module)
    q_len = query.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    if is_causal and key.shape[2] > q_len:   # empty static cache at prefill, as SDPA does
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        if position_bias is not None:
            position_bias = position_bias[..., :q_len]
    sinks = kwargs.get("s_aux", kwargs.get("sinks"))
    out = attention(query, key, value, options, state, attn_mask=attention_mask,
                    is_causal=is_causal, scale=scaling, extra_bias=position_bias,
                    dropout_p=float(dropout), sinks=sinks, soft_cap=kwargs.get("softcap"))
    return out.transpose(1, 2), None   # the op lays [B, H, N, D] out as [B, N, H, D]


def _calls_attention_interface(cls: type) -> bool:
    """Whether the class's own forward dispatches through ALL_ATTENTION_FUNCTIONS (the same
    source heuristic transformers uses to know a model can switch implementations)."""
    if cls not in _uses_interface:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _uses_interface[cls] = "ALL_ATTENTION_FUNCTIONS" in source
    return _uses_interface[cls]


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` that call the attention interface, by path."""
    return {name: m for name, m in model.named_modules() if _calls_attention_interface(type(m))}


def _num_heads(module: nn.Module) -> int:
    for attr in ("num_heads", "num_attention_heads", "n_heads"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    config = getattr(module, "config", None)
    if isinstance(getattr(config, "num_attention_heads", None), int):
        return int(config.num_attention_heads)
    raise ValueError(f"cannot tell the head count of {type(module).__name__} for bias='head'")


def _place(state: BinattnLayerState, module: nn.Module) -> BinattnLayerState:
    for p in list(module.parameters()) + list(module.buffers()):
        return state.to(p.device)
    return state


def _set_states(model: nn.Module, states: Mapping[str, BinattnLayerState],
                options: BinattnAttentionConfig) -> None:
    modules = attention_modules(model)
    for path, state in states.items():
        setattr(modules[path], STATE_NAME, _place(state, modules[path]))
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, {"options": options.to_dict(),
                                     "layers": {p: s.spec() for p, s in states.items()}})
        if getattr(config, "_attn_implementation", None) != NAME:
            model.set_attn_implementation(NAME)


def attach(model: nn.Module, options: Union[BinattnAttentionConfig, Mapping, None] = None, *,
           checkpoint: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None
           ) -> nn.Module:
    """Give every attention layer of ``model`` its own binattn state and switch it to binattn.

    Without ``checkpoint``: each layer gets ``options`` (default: the model config's ``binattn``
    options, else ``register``'s), and a zero bias with ``bias="head"`` or ``"relpos_1d"``. With
    ``checkpoint`` (a ``save_pretrained`` directory or a state_dict): rebuilds the layers the
    model config's ``binattn`` entry describes and loads their tensors from it — the second step
    of loading a saved binattn model (``from_pretrained`` skips tensors of modules it did not
    build). Writes the entry to ``model.config`` (saved by ``save_pretrained``). Returns model.
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"model {type(model).__name__} has no attention module that calls "
                         "transformers' attention interface")
    entry = getattr(getattr(model, "config", None), CONFIG_KEY, None) or {}
    if checkpoint is not None:
        if options is not None:
            raise ValueError("pass options or checkpoint, not both: a checkpoint's options are "
                             f"in its config's '{CONFIG_KEY}' entry")
        layers = entry.get("layers") or {}
        missing = sorted(set(layers) - set(modules))
        if not layers or missing:
            raise ValueError(f"checkpoint: the model config's '{CONFIG_KEY}' entry must list "
                             f"the attention layers to rebuild (missing in the model: {missing})")
        opts = BinattnAttentionConfig.coerce(entry.get("options"))
        _set_states(model, {p: BinattnLayerState.from_spec(s) for p, s in layers.items()}, opts)
        _load_tensors(model, _read_state_dict(checkpoint))
        return model
    opts = BinattnAttentionConfig.coerce(options if options is not None
                                         else entry.get("options", _defaults))
    states = {p: BinattnLayerState(opts, bias=attached_bias(opts.bias, _num_heads(m)))
              for p, m in modules.items()}
    _set_states(model, states, opts)
    return model


def _read_state_dict(checkpoint: Union[str, os.PathLike, Mapping[str, torch.Tensor]]
                     ) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    path = os.fspath(checkpoint)
    files = [os.path.join(path, "model.safetensors")]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(path, s) for s in shards]
    if not all(os.path.isfile(f) for f in files):
        bin_file = os.path.join(path, "pytorch_model.bin")
        if os.path.isfile(bin_file):
            return torch.load(bin_file, map_location="cpu", weights_only=True)
        raise FileNotFoundError(f"checkpoint: no model.safetensors (or index, or "
                                f"pytorch_model.bin) in {path!r}")
    from safetensors.torch import load_file
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update({k: v for k, v in load_file(f).items() if f".{STATE_NAME}." in k})
    return out


def _load_tensors(model: nn.Module, source: Mapping[str, torch.Tensor]) -> None:
    """Load the ``.binattn.`` tensors; a base-model prefix may differ (saved from a model with
    a head, loaded into the base model, or the reverse)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    wanted = [k for k in model.state_dict() if f".{STATE_NAME}." in k]
    found, missing = {}, []
    for key in wanted:
        for cand in (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}.")):
            if cand in source:
                found[key] = source[cand]
                break
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"checkpoint lacks binattn tensor(s) {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}")
    model.load_state_dict(found, strict=False)


def load_binarized(model: nn.Module, binarized: nn.Module, *, strict: bool = True) -> list[str]:
    """Copy each site's learned state from ``binattn.binarize(model, ...)`` (trained or not) into
    the same Hugging Face ``model`` and switch it to binattn.

    Per site (matched by module path): options (scale mode, top-N, 8-bit P/V, binarizer, ...),
    static ``q_scale``/``k_scale`` and the learned bias (``binattn_bias_<i>``: relpos, dense or
    head). ``strict``: every attention layer of ``model`` must have a site (else ValueError);
    False gives the others ``register``'s defaults. Returns the paths loaded.
    """
    from ..binarize_pass import find_sites   # binarize_pass imports torch.export machinery
    modules = attention_modules(model)
    sites = find_sites(binarized)
    if not sites:
        raise ValueError("binarized has no BinaryAttentionSite: pass binattn.binarize()'s result")
    states: dict[str, BinattnLayerState] = {}
    for site in sites:
        path = site.module_path
        if path not in modules:
            raise ValueError(f"binarized site {site.index} comes from {path!r}, which is not an "
                             f"attention module of {type(model).__name__} (those: "
                             f"{sorted(modules)[:4]}...)")
        if site.mode != "binary":
            raise ValueError(f"binarized site {site.index} ({path}) is in mode {site.mode!r}; "
                             "only binary sites load into the drop-in")
        scaling = getattr(modules[path], "scaling", None)
        scale = site.scale if site.scale is not None else site.shape.get("D", 0) ** -0.5
        if isinstance(scaling, float) and abs(scaling - scale) > 1e-6 * max(1.0, abs(scale)):
            raise ValueError(f"site {site.index} ({path}) has scale {scale} but the module's "
                             f"scaling is {scaling}: not the same model")
        opts = BinattnAttentionConfig()
        opts.attention = site.options.replace(is_causal=False, scale=None)
        bias = getattr(binarized, f"binattn_bias_{site.index}", None)
        states[path] = BinattnLayerState(
            opts, bias=None if bias is None else _copy_module(bias),
            q_scale=None if site.q_scale is None else site.q_scale.detach().clone(),
            k_scale=None if site.k_scale is None else site.k_scale.detach().clone())
    uncovered = sorted(set(modules) - set(states))
    if uncovered and strict:
        raise ValueError(f"attention layer(s) {uncovered} have no binarized site (excluded by "
                         "filter_fn or skipped); pass strict=False to run them with defaults")
    for path in uncovered:
        states[path] = BinattnLayerState(_defaults)
    _set_states(model, states, next(iter(states.values())).options)
    return sorted(states)


def _copy_module(module: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(module)


register()
