"""Example inputs of a model, by name: ``--input name=shape:dtype``, synthesis from a Hugging Face
config, the dynamic dims they get, and the named-input forward a saved model keeps.

What it does:

- parses ``--input input_ids=2,16:int64`` (repeatable) into :class:`InputSpec`;
- synthesizes the inputs of a Hugging Face model from its config and its forward's parameters:
  ``input_ids`` + ``attention_mask`` (text), ``pixel_values`` (vision), ``input_features``
  (Whisper-style speech), ``input_values`` (raw audio), ``decoder_input_ids`` (encoder-decoder),
  together when the forward takes several (T5, Whisper, CLIP); the model's main input that it
  cannot make is an error naming that input;
- gives each input its dynamic dims (:func:`dynamic_dims`: the batch dim of every input, and the
  sequence dim of integer ``[batch, seq]`` inputs — token ids and masks);
- :func:`use_named_inputs` gives a module a forward that takes exactly the named inputs, passes
  ``use_cache=False`` / ``return_dict=True`` where the model's forward has them, and returns plain
  dicts/tuples of tensors, so a ``.pt2`` exported from it loads with torch alone (no
  ``transformers`` pytree classes in its output spec).

What it does not: load files (``model_io``), or guess inputs the config does not describe.
"""
from __future__ import annotations

import inspect as pyinspect
import re
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import UserError

BATCH = 2
TEXT_TOKENS = 16
DECODER_TOKENS = 8
AUDIO_SAMPLES = 3200
DTYPES = {"int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32,
          "float32": torch.float32, "float": torch.float32, "float16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "bool": torch.bool}
_INPUT_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=([0-9x,]+)(?::([a-z0-9]+))?$")


@dataclass
class InputSpec:
    """One named example input: shape, dtype, and the vocabulary size for token ids."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    vocab: Optional[int] = None
    dims: dict[int, str] = field(default_factory=dict)  # dynamic dim → its name, for messages

    def make(self) -> torch.Tensor:
        """A random tensor of this spec: floats normal, masks all ones, token ids below
        ``vocab`` (zeros where the vocabulary is unknown: index 0 is valid in any table)."""
        if self.dtype.is_floating_point:
            return torch.randn(self.shape, dtype=self.dtype)
        if self.dtype == torch.bool or "mask" in self.name:
            return torch.ones(self.shape, dtype=self.dtype)
        if not self.vocab:
            return torch.zeros(self.shape, dtype=self.dtype)
        return torch.randint(0, min(self.vocab, 100), self.shape, dtype=self.dtype)

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.name} {'×'.join(map(str, self.shape))} {dtype}"


def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """``"2,16"`` (or ``"2x16"``) → (2, 16); UserError starting with ``what`` otherwise."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"{what} wants comma-separated ints, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise UserError(f"{what} wants positive ints, got {text!r}")
    return shape


def parse_input_specs(texts: Iterable[str]) -> Optional[list[InputSpec]]:
    """``["input_ids=2,16:int64", "pixel_values=2,3,32,32"]`` → specs (dtype default float32);
    None for no ``--input``. Errors name ``--input`` and the bad text."""
    texts = list(texts or ())
    if not texts:
        return None
    specs: list[InputSpec] = []
    for text in texts:
        m = _INPUT_RE.match(text.strip())
        if not m:
            raise UserError(f"--input wants NAME=SHAPE[:DTYPE], e.g. input_ids=2,16:int64, "
                            f"got {text!r}")
        name, shape_text, dtype_text = m.groups()
        shape = parse_shape(shape_text, f"--input {name}: the shape")
        if dtype_text is not None and dtype_text not in DTYPES:
            raise UserError(f"--input {name}: unknown dtype {dtype_text!r} (one of "
                            f"{', '.join(DTYPES)})")
        if any(s.name == name for s in specs):
            raise UserError(f"--input {name} is given twice")
        specs.append(InputSpec(name, shape, DTYPES[dtype_text or "float32"]))
    return specs


def dynamic_dims(x: torch.Tensor) -> dict[int, Any]:
    """The dims exported dynamic (``Dim.AUTO``: dynamic where the model allows it): the batch
    dim, and the sequence dim of an integer ``[batch, seq]`` input (token ids, masks)."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return {}
    dims = {0: torch.export.Dim.AUTO}
    if x.dim() == 2 and not x.dtype.is_floating_point:
        dims[1] = torch.export.Dim.AUTO
    return dims


def dynamic_shapes(inputs: Sequence[torch.Tensor]) -> tuple:
    """``torch.export``'s ``dynamic_shapes`` for positional ``inputs`` (:func:`dynamic_dims`)."""
    return tuple(dynamic_dims(x) or None for x in inputs)


# --- Hugging Face synthesis ---------------------------------------------------------------------

def forward_parameters(model: nn.Module) -> list[str]:
    """Names of the forward's parameters (no ``*args``/``**kwargs``), in order."""
    forward = getattr(type(model), "forward", model.forward)
    try:
        params = pyinspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (pyinspect.Parameter.POSITIONAL_OR_KEYWORD, pyinspect.Parameter.KEYWORD_ONLY,
             pyinspect.Parameter.POSITIONAL_ONLY)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def _sub(config: Any, key: str) -> Any:
    return getattr(config, key, None) or config


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    try:
        return getter() if getter else _sub(config, "text_config")
    except Exception:  # noqa: BLE001 (a config without a text part)
        return _sub(config, "text_config")


def _max_positions(config: Any, *keys: str) -> Optional[int]:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _tokens(config: Any, want: int, *position_keys: str) -> int:
    limit = _max_positions(config, *position_keys)
    return max(2, min(want, limit)) if limit else want


def _pair(x: Any) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


def _synthesize(name: str, config: Any, text_len: int) -> Optional[InputSpec]:
    """The spec of one well-known Hugging Face input, or None when the config does not say."""
    text = _text_config(config)
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    if name == "input_ids" and vocab:
        return InputSpec(name, (BATCH, text_len), torch.int64, int(vocab))
    if name == "attention_mask":
        return InputSpec(name, (BATCH, text_len), torch.int64)
    if name == "decoder_input_ids" and getattr(config, "is_encoder_decoder", False):
        decoder = getattr(config, "decoder", None) or text
        n = _tokens(decoder, DECODER_TOKENS, "max_target_positions", "max_position_embeddings",
                    "n_positions")
        return InputSpec(name, (BATCH, n), torch.int64,
                         int(getattr(decoder, "vocab_size", None) or vocab or 100))
    vision = _sub(config, "vision_config")
    if name == "pixel_values" and getattr(vision, "image_size", None):
        channels = int(getattr(vision, "num_channels", None) or 3)
        return InputSpec(name, (BATCH, channels, *_pair(vision.image_size)))
    audio = _sub(config, "audio_config")
    mels, frames = getattr(audio, "num_mel_bins", None), getattr(audio, "max_source_positions",
                                                                  None)
    if name == "input_features" and mels and frames:
        # Whisper's encoder wants exactly 2 × max_source_positions frames (two convs, stride 2)
        return InputSpec(name, (BATCH, int(mels), 2 * int(frames)))
    if name == "input_values":
        return InputSpec(name, (BATCH, AUDIO_SAMPLES))
    return None


KNOWN_INPUTS = ("input_ids", "attention_mask", "decoder_input_ids", "pixel_values",
                "input_features", "input_values")


def hf_input_specs(model: nn.Module) -> list[InputSpec]:
    """The inputs a Hugging Face model is captured with, in its forward's order (see module
    docstring). ``attention_mask`` comes with ``input_ids`` only (a text padding mask)."""
    config = model.config
    params = forward_parameters(model)
    main = getattr(model, "main_input_name", None) or (params[0] if params else "input_ids")
    text_len = _tokens(_text_config(config), TEXT_TOKENS, "max_position_embeddings",
                       "n_positions", "max_source_positions")
    specs = []
    for name in params:
        if name not in KNOWN_INPUTS:
            continue
        if name == "attention_mask" and "input_ids" not in [s.name for s in specs]:
            continue
        spec = _synthesize(name, config, text_len)
        if spec is not None:
            specs.append(spec)
    if main not in [s.name for s in specs]:
        raise UserError(f"cannot make the input {main!r} of {type(model).__name__} from its "
                        f"config; give it with --input {main}=SHAPE:DTYPE (e.g. "
                        f"--input {main}=2,16:int64)")
    return specs


# --- the named-input forward --------------------------------------------------------------------

def plain_outputs(out: Any, where: str = "output") -> Any:
    """``out`` with every mapping (a ``ModelOutput``) made a ``dict`` and None entries dropped:
    plain pytrees that ``torch.export.load`` reads without the model's library."""
    if out is None or isinstance(out, (torch.Tensor, int, float, bool)):
        return out
    if isinstance(out, Mapping):
        return {k: plain_outputs(v, f"{where}[{k!r}]") for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return tuple(plain_outputs(v, f"{where}[{i}]") for i, v in enumerate(out))
    hint = (" (a key/value cache: capture with use_cache=False)"
            if "cache" in type(out).__name__.lower() else "")
    raise UserError(f"the model's {where} is a {type(out).__name__}, not a tensor{hint}; "
                    "binattn saves tensors in dicts and tuples")


def _named_forward(names: Sequence[str], extra: dict[str, Any]):
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = forward.__signature__.bind(self, *args, **kwargs)
        named = {k: v for k, v in bound.arguments.items() if k != "self"}
        return plain_outputs(type(self).forward(self, **named, **extra))

    params = [pyinspect.Parameter(n, pyinspect.Parameter.POSITIONAL_OR_KEYWORD)
              for n in ("self", *names)]
    forward.__signature__ = pyinspect.Signature(params)
    return forward


def use_named_inputs(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Give ``model`` (in place) a forward taking exactly ``names`` (positional or by name) that
    calls its class's forward with them, ``use_cache=False`` and ``return_dict=True`` where that
    forward has them, and returns :func:`plain_outputs`. A name that is none of the forward's
    parameters, or a parameter without default left out, is a ``UserError`` naming it. Module
    paths and parameter names stay as they are (no wrapper module); a deep copy keeps the
    forward, bound to the copy."""
    params = forward_parameters(model)
    takes_kwargs = any(p.kind == pyinspect.Parameter.VAR_KEYWORD for p in
                       pyinspect.signature(type(model).forward).parameters.values())
    unknown = [n for n in names if n not in params]
    if unknown and (params or not takes_kwargs):  # **kwargs alone: any name may be an input
        raise UserError(f"--input {unknown[0]}: {type(model).__name__}.forward has no input "
                        f"{unknown[0]!r} (its inputs: {', '.join(params)})")
    required = [p.name for p in pyinspect.signature(type(model).forward).parameters.values()
                if p.default is p.empty and p.name != "self" and p.kind in (
                    p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY, p.KEYWORD_ONLY)]
    missing = [n for n in required if n not in names]
    if missing:
        raise UserError(f"{type(model).__name__}.forward needs the input {missing[0]!r} too; "
                        f"give it with --input {missing[0]}=SHAPE:DTYPE")
    extra = {k: v for k, v in (("use_cache", False), ("return_dict", True)) if k in params}
    model.forward = types.MethodType(_named_forward(list(names), extra), model)
    return model
