"""Load the MODEL argument of every CLI verb: a ``.pt2`` ExportedProgram, a ``torch.save``'d
module, or a Hugging Face model directory, together with example inputs to trace it with.

What it does: picks the loader from the path, loads safely (``weights_only=True`` unless
``trust_pickle``; a pickle that needs more says to pass ``--trust-pickle``), and makes example
inputs: the program's own example shapes for a ``.pt2``, ``input_shape`` where given, else a
guess from the model (image size for vision models, a short token sequence for text models).
Every failure is a one-line ``binattn.errors.UserError``. What it does not: rewrite
(``binarize_pass``).
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .errors import UserError

DEFAULT_TOKENS = 16


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False,
               input_shape: Optional[Sequence] = None) -> tuple[nn.Module, tuple]:
    """``(model, example_inputs)`` for a .pt2, a torch.save'd module or a HF model directory.

    ``input_shape``: one shape (ints) or one shape per input (see :func:`parse_input_shapes`).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if p.is_dir():
        return _load_hf_dir(p, input_shape)
    if p.suffix == ".pt2":
        return _load_pt2(p, input_shape)
    return _load_pickled(p, trust_pickle, input_shape)


def parse_input_shapes(text: Optional[str]) -> Optional[list[tuple[int, ...]]]:
    """``"1,3,224,224"`` → [(1, 3, 224, 224)]; several inputs: ``"2,7,32;2,7,32"``."""
    if text is None:
        return None
    shapes = []
    for part in text.split(";"):
        try:
            shape = tuple(int(p) for p in part.replace("x", ",").split(","))
        except ValueError:
            raise UserError(f"--input-shape wants comma-separated ints (';' between inputs), "
                            f"got {text!r}") from None
        if not shape or min(shape) < 1:
            raise UserError(f"--input-shape wants positive ints, got {text!r}")
        shapes.append(shape)
    return shapes


def _shape_inputs(input_shape: Sequence, dtype: torch.dtype = torch.float32) -> tuple:
    """Random inputs for one shape (a sequence of ints) or several (a sequence of those)."""
    shapes = [input_shape] if input_shape and isinstance(input_shape[0], int) else input_shape
    inputs = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise UserError(f"--input-shape must be positive ints, got {input_shape}")
        inputs.append(torch.randn(shape, dtype=dtype) if dtype.is_floating_point
                      else torch.randint(0, 100, shape, dtype=dtype))
    return tuple(inputs)


def _load_pt2(p: Path, input_shape) -> tuple[nn.Module, tuple]:
    try:
        program = torch.export.load(str(p))
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{p}: not a readable .pt2 ExportedProgram ({type(err).__name__}: "
                        f"{_first_line(err)})") from err
    inputs = _program_inputs(program) if input_shape is None else _shape_inputs(input_shape)
    return program, inputs


def _program_inputs(program: torch.export.ExportedProgram) -> tuple:
    """Random tensors shaped like the program's user inputs (symbolic dims at their hints)."""
    from .binarize_pass.matchers.base import hint

    specs = [s for s in program.graph_signature.input_specs
             if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    names = {s.arg.name for s in specs}
    inputs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise UserError("the .pt2 takes non-tensor inputs; binattn cannot make "
                                "example inputs for it")
            shape = [hint(s) for s in val.shape]
            if val.dtype.is_floating_point:
                inputs.append(torch.randn(shape, dtype=val.dtype))
            else:
                inputs.append(torch.zeros(shape, dtype=val.dtype))
    return tuple(inputs)


def _load_pickled(p: Path, trust_pickle: bool, input_shape) -> tuple[nn.Module, tuple]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if not trust_pickle and "weights_only" in str(err):
            raise UserError(f"{p}: this pickle holds code, not only weights; pass --trust-pickle "
                            "if you trust its source") from err
        raise UserError(f"{p}: corrupt or unreadable file ({_first_line(err)})") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, AttributeError,
            ModuleNotFoundError, ValueError) as err:
        raise UserError(f"{p}: corrupt or unreadable torch.save file "
                        f"({type(err).__name__}: {_first_line(err)})") from err
    if isinstance(obj, dict):
        raise UserError(f"{p}: holds a state dict, not a module; save the module itself "
                        "(torch.save(model)) or export it to .pt2")
    if not isinstance(obj, nn.Module):
        raise UserError(f"{p}: holds a {type(obj).__name__}, not an nn.Module")
    obj.eval()
    return obj, (_shape_inputs(input_shape) if input_shape is not None else _guess_inputs(obj, p))


def _guess_inputs(model: nn.Module, p: Path) -> tuple:
    """Example inputs from what the model declares (a binattn TinyViT, timm, HF config)."""
    if hasattr(model, "example_inputs"):
        return tuple(model.example_inputs())
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return (torch.randn(1, *cfg["input_size"]),)
    hf = getattr(model, "config", None)
    if hf is not None:
        return _hf_inputs(model, hf)
    raise UserError(f"{p}: cannot tell what input the model takes; pass --input-shape")


def _hf_inputs(model: nn.Module, config: Any) -> tuple:
    if getattr(config, "sample_size", None) and getattr(config, "in_channels", None):
        side = int(config.sample_size)   # diffusers DiT-style: (latents, timestep[, class])
        inputs = (torch.randn(1, int(config.in_channels), side, side), torch.tensor([1]))
        if getattr(config, "num_embeds_ada_norm", None):
            inputs += (torch.tensor([0]),)
        return inputs
    if getattr(config, "image_size", None) and getattr(config, "num_channels", None):
        size = config.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return (torch.randn(1, config.num_channels, *size),)
    if getattr(config, "vocab_size", None):
        return (torch.randint(0, min(int(config.vocab_size), 1000), (1, DEFAULT_TOKENS)),)
    raise UserError("cannot tell what input the Hugging Face model takes; pass --input-shape")


def _load_hf_dir(p: Path, input_shape) -> tuple[nn.Module, tuple]:
    if not (p / "config.json").exists():
        raise UserError(f"{p}: a directory, but not a Hugging Face model (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{p}/config.json is not valid JSON ({_first_line(err)})") from err
    try:
        model = _from_pretrained(p, config)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{p}: could not load the Hugging Face model ({type(err).__name__}: "
                        f"{_first_line(err)})") from err
    model.eval()
    hf_config = model.config
    if getattr(hf_config, "use_cache", None):
        hf_config.use_cache = False  # a KV cache object is no tensor output: export needs none
    if input_shape is not None:
        dtype = torch.float32 if _is_image_model(hf_config) else torch.long
        return model, _shape_inputs(input_shape, dtype)
    return model, _hf_inputs(model, hf_config)


def _from_pretrained(p: Path, config: dict) -> nn.Module:
    """transformers' AutoModel, or the diffusers class named in config.json."""
    if "_diffusers_version" in config:
        import diffusers

        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if cls is None:
            raise UserError(f"{p}: unknown diffusers class {config.get('_class_name')!r}")
        return cls.from_pretrained(str(p), local_files_only=True)
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(p), local_files_only=True)


def _is_image_model(config: Any) -> bool:
    return bool(getattr(config, "image_size", None) or getattr(config, "sample_size", None))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
