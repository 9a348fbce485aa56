"""Load the MODEL argument of every CLI verb: a ``.pt2`` ExportedProgram, a ``torch.save``'d
module, or a Hugging Face (or diffusers) model directory, together with example inputs to trace
it with.

What it does: picks the loader from the path, loads safely (``weights_only=True`` unless
``trust_pickle``; a pickle that needs more says to pass ``--trust-pickle``; a file that is no
torch file says so), and makes example inputs: named ``--input`` specs, unnamed
``--input-shape`` shapes, the program's own example shapes for a ``.pt2``, or what the model
declares (its ``example_inputs()``, timm ``pretrained_cfg``, inputs synthesized from a Hugging
Face config, ``binattn.model_inputs``). Hugging Face models get a forward that takes exactly the
named inputs (``attention_mask`` included), runs without a KV cache and returns plain dicts, so
their ``.pt2`` loads with torch alone. A ``.pt2`` that fails to load says why (torch's own
message); one saved with Hugging Face output classes loads after importing them. Every failure
is a one-line ``binattn.errors.UserError``. What it does not: rewrite (``binarize_pass``).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from .errors import UserError
from .model_inputs import (InputSpec, dynamic_shapes, forward_parameters, hf_input_specs,
                           parse_shape, use_named_inputs)

_UNREGISTERED = re.compile(r"Deserializing ([A-Za-z_][\w.]*)\.(\w+) in pytree is not registered")
# modules binattn may import to register a .pt2's output classes (saved before outputs were
# plain dicts): libraries that register their ModelOutput classes as pytree nodes on import
PYTREE_LIBRARIES = ("transformers", "diffusers")


@dataclass
class LoadedModel:
    """A loaded MODEL: the module (or ExportedProgram), its example inputs (positional), their
    names where known, and ``torch.export`` ``dynamic_shapes`` for them (None: the capture's
    default, the batch dim where possible)."""

    model: nn.Module | torch.export.ExportedProgram
    inputs: tuple
    names: Optional[tuple[str, ...]] = None
    dynamic_shapes: Optional[tuple] = None

    def describe_inputs(self) -> str:
        """``input_ids 2×16 int64, attention_mask 2×16 int64`` (names where known)."""
        names = self.names or tuple(f"input {i}" for i in range(len(self.inputs)))
        return ", ".join(
            f"{n} {'×'.join(map(str, x.shape))} {str(x.dtype).replace('torch.', '')}"
            if isinstance(x, torch.Tensor) else n for n, x in zip(names, self.inputs))

    @contextlib.contextmanager
    def naming_inputs(self) -> Iterator[None]:
        """A ``UserError`` raised inside (a model that fails to export with these inputs) also
        says which example inputs it got and how to give others."""
        try:
            yield
        except UserError as err:
            raise UserError(f"{err}; inputs tried: {self.describe_inputs()} (give them with "
                            "--input NAME=SHAPE[:DTYPE])") from err


def load(path: str | os.PathLike, *, trust_pickle: bool = False,
         input_shape: Optional[Sequence] = None,
         inputs: Optional[Sequence[InputSpec]] = None) -> LoadedModel:
    """Load MODEL (a .pt2, a torch.save'd module or a Hugging Face / diffusers directory) and
    make its example inputs.

    ``inputs`` (``--input``, :func:`binattn.model_inputs.parse_input_specs`) names every input;
    ``input_shape`` gives unnamed shapes (one, or one per input); at most one of them. Without
    either, the inputs are the .pt2's own, what the module declares, or synthesized from a
    Hugging Face config (:func:`binattn.model_inputs.hf_input_specs`). Hugging Face and diffusers
    models, and any module given named ``inputs``, get a forward taking exactly those inputs
    and returning plain dicts/tuples (:func:`binattn.model_inputs.use_named_inputs`), with the
    batch and sequence dims dynamic (:func:`binattn.model_inputs.dynamic_shapes`).
    """
    if input_shape is not None and inputs:
        raise UserError("give --input or --input-shape, not both")
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if p.is_dir():
        return _load_hf_dir(p, input_shape, inputs)
    if p.suffix == ".pt2":
        return _load_pt2(p, input_shape, inputs)
    return _load_pickled(p, trust_pickle, input_shape, inputs)


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False,
               input_shape: Optional[Sequence] = None,
               inputs: Optional[Sequence[InputSpec]] = None) -> tuple[nn.Module, tuple]:
    """``(model, example_inputs)`` of :func:`load`."""
    loaded = load(path, trust_pickle=trust_pickle, input_shape=input_shape, inputs=inputs)
    return loaded.model, loaded.inputs


def parse_input_shapes(text: Optional[str]) -> Optional[list[tuple[int, ...]]]:
    """``"1,3,224,224"`` → [(1, 3, 224, 224)]; several inputs: ``"2,7,32;2,7,32"``."""
    if text is None:
        return None
    return [parse_shape(part, "--input-shape (';' between inputs)") for part in text.split(";")]


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


def _load_pt2(p: Path, input_shape, specs) -> LoadedModel:
    program = _read_pt2(p)
    placeholders = user_placeholders(program)
    names = tuple(name for name, _ in placeholders)
    if specs:
        by_name = {s.name: s for s in specs}
        unknown = [n for n in by_name if n not in names]
        if unknown:
            raise UserError(f"--input {unknown[0]}: {p.name} has no input {unknown[0]!r} "
                            f"(its inputs: {', '.join(names)})")
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UserError(f"{p.name} also takes the input {missing[0]!r}; give every input "
                            f"with --input (its inputs: {', '.join(names)})")
        inputs = tuple(by_name[n].make() for n in names)
    elif input_shape is not None:
        inputs = _shape_inputs(input_shape)
    else:
        inputs = _program_inputs(placeholders)
    dynamic = tuple({i: torch.export.Dim.AUTO for i, size in enumerate(val.shape)
                     if isinstance(size, torch.SymInt)} or None
                    for _, val in placeholders)
    return LoadedModel(program, inputs, names, dynamic if len(dynamic) == len(inputs) else None)


def _read_pt2(p: Path) -> torch.export.ExportedProgram:
    """``torch.export.load`` with the real reason on failure (torch logs it and raises "check
    the warnings above"). A .pt2 whose output spec names a class of a library in
    ``PYTREE_LIBRARIES`` (a Hugging Face ``ModelOutput`` saved before binattn saved plain dicts)
    loads after importing that class's module, which registers it."""
    records: list[logging.LogRecord] = []
    for attempt in range(2):
        records.clear()
        try:
            with _collect_logs("torch.export", records):
                return torch.export.load(str(p))
        except Exception as err:  # noqa: BLE001
            reason = _load_reason(err, records)
            found = _UNREGISTERED.search(reason)
            if attempt == 0 and found and found.group(1).split(".")[0] in PYTREE_LIBRARIES:
                try:
                    importlib.import_module(found.group(1))
                    continue
                except ImportError:
                    reason += f" (install {found.group(1).split('.')[0]} to load it)"
            raise UserError(f"{p}: not a readable .pt2 ExportedProgram ({reason})") from err
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _collect_logs(name: str, records: list) -> Iterator[None]:
    """Keep the WARNING records of logger ``name`` (and stop them reaching the console)."""
    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(name)
    level, propagate, handlers = logger.level, logger.propagate, logger.handlers
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.handlers = [Keep(logging.WARNING)]
    try:
        yield
    finally:
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _load_reason(err: BaseException, records: list) -> str:
    """The first logged exception of the load, else the error itself, as ``Type: first line``."""
    for record in records:
        if record.exc_info and record.exc_info[1] is not None:
            cause = record.exc_info[1]
            while cause.__cause__ is not None:
                cause = cause.__cause__
            return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(err).__name__}: {_first_line(err)}"


def user_placeholders(program: torch.export.ExportedProgram) -> list[tuple[str, Any]]:
    """``(name, example value)`` of the program's user inputs, in order."""
    specs = [s for s in program.graph_signature.input_specs
             if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    names = {s.arg.name for s in specs}
    return [(node.name, node.meta.get("val")) for node in program.graph.nodes
            if node.op == "placeholder" and node.name in names]


def _program_inputs(placeholders: list[tuple[str, Any]]) -> tuple:
    """Random tensors shaped like the program's user inputs (symbolic dims at their hints)."""
    from .binarize_pass.matchers.base import hint

    inputs = []
    for name, val in placeholders:
        if not isinstance(val, torch.Tensor):
            raise UserError(f"the .pt2 takes a non-tensor input {name!r}; binattn cannot make "
                            "example inputs for it")
        inputs.append(InputSpec(name, tuple(hint(s) for s in val.shape), val.dtype).make())
    return tuple(inputs)


def _torch_file(p: Path) -> bool:
    """Whether ``p`` is in a format torch.save writes: a zip archive with a ``data.pkl``, or the
    legacy pickle stream that starts with torch's magic number (read without running code)."""
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as archive:
                return any(n.endswith("data.pkl") for n in archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    class NoCode(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError("code")

    try:
        with open(p, "rb") as f:
            return NoCode(f).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # noqa: BLE001 (anything unreadable is not a torch file)
        return False


def _load_pickled(p: Path, trust_pickle: bool, input_shape, specs) -> LoadedModel:
    if not _torch_file(p):
        raise UserError(f"{p}: corrupt or unreadable: not a torch file (neither the zip archive "
                        "torch.save writes nor its legacy format)")
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
    return _module_inputs(obj, p, input_shape, specs)


def _module_inputs(model: nn.Module, p: Path, input_shape, specs) -> LoadedModel:
    """Example inputs of a loaded module: ``--input`` (named), ``--input-shape``, or what the
    model declares; a Hugging Face / diffusers model always gets the named-input forward."""
    is_hf = _is_hf_model(model)
    if specs:
        vocab = _vocab(model)
        for spec in specs:
            spec.vocab = spec.vocab or vocab
        use_named_inputs(model, [s.name for s in specs])
        if is_hf:
            _check_hf_inputs(model, [s.name for s in specs])
        inputs = tuple(s.make() for s in specs)
        return LoadedModel(model, inputs, tuple(s.name for s in specs), dynamic_shapes(inputs))
    if input_shape is not None:
        dtype = torch.long if is_hf and not _is_image_model(model.config) else torch.float32
        inputs = _shape_inputs(input_shape, dtype)
        if not is_hf:
            return LoadedModel(model, inputs)
        names = forward_parameters(model)[:len(inputs)]
        use_named_inputs(model, names)
        return LoadedModel(model, inputs, tuple(names), dynamic_shapes(inputs))
    if hasattr(model, "example_inputs"):
        return LoadedModel(model, tuple(model.example_inputs()))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return LoadedModel(model, (torch.randn(1, *cfg["input_size"]),))
    if _is_diffusers_model(model):
        inputs, names = _diffusers_inputs(model.config), forward_parameters(model)
        names = names[:len(inputs)]
        use_named_inputs(model, names)
        return LoadedModel(model, inputs, tuple(names))
    if is_hf:
        specs = hf_input_specs(model)
        use_named_inputs(model, [s.name for s in specs])
        inputs = tuple(s.make() for s in specs)
        return LoadedModel(model, inputs, tuple(s.name for s in specs), dynamic_shapes(inputs))
    raise UserError(f"{p}: cannot tell what input the model takes; pass --input "
                    "NAME=SHAPE:DTYPE (or --input-shape)")


def _check_hf_inputs(model: nn.Module, names: list[str]) -> None:
    """Named inputs of a Hugging Face model must include those its config says it needs (the
    decoder ids of an encoder-decoder, the pixels of CLIP, ...; a mask is optional)."""
    try:
        needed = [s.name for s in hf_input_specs(model) if s.name != "attention_mask"]
    except UserError:
        return  # binattn cannot tell: the user's inputs are all there is to go by
    missing = [n for n in needed if n not in names]
    if missing:
        raise UserError(f"{type(model).__name__} also needs the input {missing[0]!r}; give it "
                        f"with --input {missing[0]}=SHAPE:DTYPE (inputs it takes: "
                        f"{', '.join(needed)})")


def _diffusers_inputs(config: Any) -> tuple:
    """diffusers DiT-style: (latents, timestep[, class label])."""
    if not (getattr(config, "sample_size", None) and getattr(config, "in_channels", None)):
        raise UserError("cannot tell what input the diffusers model takes; pass --input "
                        "NAME=SHAPE:DTYPE")
    side = int(config.sample_size)
    inputs = (torch.randn(1, int(config.in_channels), side, side), torch.tensor([1]))
    if getattr(config, "num_embeds_ada_norm", None):
        inputs += (torch.tensor([0]),)
    return inputs


def _is_hf_model(model: nn.Module) -> bool:
    """A transformers PreTrainedModel (checked without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(model).__mro__)


def _is_diffusers_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("diffusers")


def _vocab(model: nn.Module) -> Optional[int]:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    return int(vocab) if isinstance(vocab, int) else None


def _load_hf_dir(p: Path, input_shape, specs) -> LoadedModel:
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
    return _module_inputs(model, p, input_shape, specs)


def _from_pretrained(p: Path, config: dict) -> nn.Module:
    """transformers' AutoModel, or the diffusers class named in config.json (no progress bars)."""
    if "_diffusers_version" in config:
        import diffusers

        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if cls is None:
            raise UserError(f"{p}: unknown diffusers class {config.get('_class_name')!r}")
        return cls.from_pretrained(str(p), local_files_only=True)
    import transformers
    from transformers import AutoModel

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(str(p), local_files_only=True)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _is_image_model(config: Any) -> bool:
    return bool(getattr(config, "image_size", None) or getattr(config, "sample_size", None))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
