"""Offline training data: real digits, cluttered digits, unlabeled English text, and batching.

What it does:
  - ``digits()``: scikit-learn's ``load_digits`` (1797 real 8×8 grey images, shipped with
    scikit-learn), as float tensors ``[N, 1, 8, 8]`` scaled to [0, 1] and int64 labels;
  - ``cluttered_digits()``: each digit at a random position on a 24×24 canvas, with clutter made of
    fragments of *other* digits, so the classifier has to attend to the right place; any number
    of renderings per digit (fresh positions and clutter each), vectorized;
  - ``stratified_folds()``: stratified k-fold index splits (scikit-learn);
  - ``stdlib_sentences()``: unlabeled English sentences from the docstrings of the Python
    standard library (always available offline), deduplicated, in a deterministic order
    (``stdlib_module_sentences()``: the same with the module each comes from); the
    multi-register ``english-mix`` corpus built on it lives in ``corpus``;
  - ``TensorData`` + ``batches()``: in-memory datasets and seeded, fixed-size batches, sharded
    across ranks for DDP.

What it does not: augmentation beyond the cluttered renderings, tokenization (the MiniLM benchmark
tokenizes), or file formats beyond ``load_tensor_data`` (``.npz``/``.pt`` with ``x``/``y`` arrays,
or a text file).
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import UserError


@dataclass
class TensorData:
    """Model inputs (a tuple of tensors sharing dim 0), optional integer labels and, for
    padded text, each example's length: its tokens before the padding along dim 1 of every
    input whose dim 1 is the padded length (``lengths``, int64 on the CPU, e.g. from
    :func:`text_lengths`; what length-bucketed batches cut to)."""

    inputs: tuple[torch.Tensor, ...]
    labels: Optional[torch.Tensor] = None
    lengths: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        n = self.inputs[0].shape[0]
        sizes = [t.shape[0] for t in self.inputs] + (
            [] if self.labels is None else [self.labels.shape[0]])
        if any(s != n for s in sizes):
            raise UserError(f"training data: inputs and labels disagree on the number of "
                            f"examples: {sizes}")
        if self.lengths is not None:
            self.lengths = self.lengths.to("cpu", torch.long)
            if self.lengths.shape != (n,) or self.inputs[0].dim() < 2:
                raise UserError(f"training data: lengths must be one per example ({n}) of "
                                f"inputs with a sequence dim, got {tuple(self.lengths.shape)}")
            padded = self.inputs[0].shape[1]
            if n and not bool(((self.lengths >= 1) & (self.lengths <= padded)).all()):
                raise UserError(f"training data: lengths must be in [1, {padded}]")

    def __len__(self) -> int:
        return self.inputs[0].shape[0]

    def subset(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> "TensorData":
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        lengths = None if self.lengths is None else self.lengths[index]
        return TensorData(tuple(t[index] for t in self.inputs), labels, lengths)

    def to(self, device: torch.device | str) -> "TensorData":
        labels = None if self.labels is None else self.labels.to(device)
        return TensorData(tuple(t.to(device) for t in self.inputs), labels, self.lengths)

    def trimmed(self) -> "TensorData":
        """The inputs cut along dim 1 to the longest example's length (no change without
        ``lengths``): the padding no example of this (batch of) data needs."""
        if self.lengths is None or len(self) == 0:
            return self
        padded, longest = self.inputs[0].shape[1], int(self.lengths.max())
        inputs = tuple(t[:, :longest] if t.dim() >= 2 and t.shape[1] == padded else t
                       for t in self.inputs)
        return TensorData(inputs, self.labels, self.lengths)


def text_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Tokens per example of a right-padded ``[N, L]`` attention mask (1 = token)."""
    return attention_mask.detach().to("cpu").ne(0).sum(1).clamp_min(1)


def batches(data: TensorData, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
            rank: int = 0, world_size: int = 1, drop_last: bool = True, length_buckets: int = 0
            ) -> Iterator[tuple[tuple[torch.Tensor, ...], Optional[torch.Tensor]]]:
    """Yield ``(inputs, labels)`` batches of exactly ``batch_size`` (per rank).

    The order depends only on (seed, epoch), so a resumed run sees the same batches; with
    ``world_size > 1`` each rank takes every ``world_size``-th batch-sized slice (DDP sharding).
    The batch size is fixed because graphs captured with static shapes only accept it.

    ``length_buckets`` > 0 (data with ``lengths``): within each window of that many steps of
    the shuffled order, examples are sorted by length, the window's steps are shuffled again,
    and each batch is cut to its longest example — similar lengths share a batch, so little of
    a step is padding (the model must accept any sequence length). Every example is still
    seen once per epoch.
    """
    n = len(data)
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    per_step = batch_size * world_size
    steps = n // per_step if drop_last else -(-n // per_step)
    if length_buckets > 0:
        if data.lengths is None:
            raise UserError("length_buckets needs text data with lengths (a padding mask)")
        order = _length_sorted(order[: steps * per_step] if drop_last else order,
                               data.lengths, per_step, length_buckets, generator)
    for step in range(steps):
        index = order[step * per_step + rank * batch_size:][:batch_size]
        if index.numel() < batch_size:  # only when not drop_last: pad by wrapping around
            index = torch.cat([index, order[: batch_size - index.numel()]])
        sub = data.subset(index)
        if length_buckets > 0:
            sub = sub.trimmed()
        yield sub.inputs, sub.labels


def _length_sorted(order: torch.Tensor, lengths: torch.Tensor, per_step: int, window: int,
                   generator: torch.Generator) -> torch.Tensor:
    """``order`` with each window of ``window`` steps sorted by length, then its steps
    shuffled (so short and long batches alternate rather than run in a sorted sweep)."""
    out = []
    span = per_step * window
    for start in range(0, order.numel(), span):
        chunk = order[start:start + span]
        chunk = chunk[torch.sort(lengths[chunk], stable=True).indices]
        groups = list(torch.split(chunk, per_step))
        full = [g for g in groups if g.numel() == per_step]
        out += [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        out += [g for g in groups if g.numel() < per_step]   # a partial step stays last
    return torch.cat(out) if out else order


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch of ``n`` examples with :func:`batches` (drop_last)."""
    steps = n // (batch_size * world_size)
    if steps == 0:
        raise UserError(f"training data has {n} examples, fewer than one batch of "
                        f"{batch_size} × {world_size} rank(s): lower --batch-size")
    return steps


def digits() -> TensorData:
    """scikit-learn's 1797 real 8×8 digit images as ``[N, 1, 8, 8]`` in [0, 1], labels 0–9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return TensorData((images,), torch.tensor(bunch.target, dtype=torch.long))


def paste_max(canvas: torch.Tensor, patches: torch.Tensor, ys: torch.Tensor,
              xs: torch.Tensor) -> None:
    """Max-composite ``patches[i]`` ([n, h, w]) into ``canvas[i]`` ([n, H, W]) at (ys[i], xs[i])."""
    n, h, w = patches.shape
    rows = (ys[:, None] + torch.arange(h))[:, :, None]
    cols = (xs[:, None] + torch.arange(w))[:, None, :]
    item = torch.arange(n)[:, None, None]
    canvas[item, rows, cols] = torch.maximum(canvas[item, rows, cols], patches)


def render_cluttered(images: torch.Tensor, canvas: int, fragments: int, fragment_size: int,
                     rng: np.random.Generator, copies: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` renderings of every image of ``images`` ([n, s, s]) on a ``canvas``² canvas.

    Each rendering draws ``fragments`` random ``fragment_size``² crops of *other* images of
    ``images`` at random positions, then max-composites the image itself at a random position.
    Returns the canvases ``[copies·n, canvas, canvas]`` (rendering-major: rows ``k·n .. k·n+n-1``
    are the k-th rendering of images 0..n-1) and the digit positions ``[copies·n, 2]`` (y, x).
    Vectorized: one indexing operation per fragment, not a loop over images.
    """
    n, side = images.shape[0], images.shape[-1]
    if canvas < side or fragment_size > side:
        raise ValueError(f"canvas {canvas} must be >= {side} and fragment_size <= {side}")
    if fragments and n < 2:
        raise ValueError("clutter needs at least 2 images (fragments come from other images)")
    total = copies * n
    own = torch.arange(n).repeat(copies)
    out = torch.zeros(total, canvas, canvas)
    span = torch.arange(fragment_size)
    for _ in range(fragments):
        other = torch.as_tensor(rng.integers(n - 1, size=total))
        other += (other >= own).long()  # another image, never the digit itself
        crop = torch.as_tensor(rng.integers(0, side - fragment_size + 1, size=(total, 2)))
        where = torch.as_tensor(rng.integers(0, canvas - fragment_size + 1, size=(total, 2)))
        rows = (crop[:, :1] + span)[:, :, None]
        cols = (crop[:, 1:] + span)[:, None, :]
        paste_max(out, images[other[:, None, None], rows, cols], where[:, 0], where[:, 1])
    pos = torch.as_tensor(rng.integers(0, canvas - side + 1, size=(total, 2)))
    paste_max(out, images[own], pos[:, 0], pos[:, 1])
    return out, pos


def cluttered_digits(canvas: int = 24, fragments: int = 4, fragment_size: int = 4,
                     seed: int = 0, index: Optional[Sequence[int] | np.ndarray] = None,
                     copies: int = 1) -> TensorData:
    """Digits of :func:`digits` placed at random spots of a ``canvas``² image, over clutter.

    Clutter: ``fragments`` random ``fragment_size``² crops of *other* digits of the same selection
    at random positions; the digit is max-composited over them (:func:`render_cluttered`).
    ``index`` selects the digits (default: all 1797; clutter then only comes from that
    selection, so a test split never shows fragments of training digits), ``copies`` renders
    each one that many times with fresh positions and clutter (rendering-major order).
    Deterministic in ``seed``. Returns ``[copies·n, 1, canvas, canvas]`` in [0, 1] + labels.
    """
    base = digits()
    if index is not None:
        base = base.subset(index)
    images, _ = render_cluttered(base.inputs[0][:, 0], canvas, fragments, fragment_size,
                                 np.random.default_rng(seed), copies)
    return TensorData((images.unsqueeze(1),), base.labels.repeat(copies))


def stratified_folds(labels: torch.Tensor, folds: int, seed: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train_index, test_index) pairs, stratified by label, shuffled by ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    y = labels.cpu().numpy()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y)]


STDLIB_SKIP = frozenset(
    "antigravity this idlelib tkinter turtle turtledemo test lib2to3 ensurepip pydoc_data msilib "
    "venv webbrowser".split())


def stdlib_modules() -> list[str]:
    """Importable standard-library module names: top level + submodules of packages.

    Skips private modules, tests, GUI/demo modules and the ones with import side effects.
    """
    import pkgutil

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in STDLIB_SKIP:
            continue
        names.append(top)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(top)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + "."):
            if not any(part in info.name for part in (".test", "tests", "__main__", "idle")):
                names.append(info.name)
    return names


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def _docstrings(module_name: str) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - a module missing on this platform just gives nothing
            return
        seen = set()
        yield inspect.getdoc(module) or ""
        for _, obj in sorted(vars(module).items()):
            if id(obj) in seen or getattr(obj, "__module__", None) != module.__name__:
                continue
            seen.add(id(obj))
            yield inspect.getdoc(obj) or ""
            if inspect.isclass(obj):
                for _, member in sorted(vars(obj).items()):
                    if inspect.isfunction(member):
                        yield inspect.getdoc(member) or ""


def _is_prose(sentence: str, min_chars: int, max_chars: int) -> bool:
    if not min_chars <= len(sentence) <= max_chars or not sentence[0].isupper():
        return False
    if any(mark in sentence for mark in (">>>", "::", "==", "()", "{", "}", "[", "]", "\\", "|")):
        return False
    words = _WORDS.findall(sentence)
    return len(words) >= 5 and sum(map(len, words)) >= 0.7 * len(sentence.replace(" ", ""))


def stdlib_module_sentences(min_chars: int = 40, max_chars: int = 240,
                            modules: Optional[Sequence[str]] = None
                            ) -> Iterator[tuple[str, str]]:
    """``(module, sentence)`` for the prose sentences of each module's docstrings (the first
    module a sentence appears in; deduplicated across modules)."""
    seen: set[str] = set()
    for name in stdlib_modules() if modules is None else modules:
        for doc in _docstrings(name):
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    if _is_prose(sentence, min_chars, max_chars) and sentence not in seen:
                        seen.add(sentence)
                        yield name, sentence


def stdlib_sentences(min_chars: int = 40, max_chars: int = 240,
                     modules: Optional[Sequence[str]] = None) -> list[str]:
    """Unlabeled English prose: sentences from standard-library docstrings, deduplicated.

    Paragraphs are joined, split at sentence ends, and kept when they look like prose (letters
    dominate, no code or doctest markers). Order is deterministic for a given Python version;
    the set differs slightly between Python versions (record ``sys.version`` with results).
    """
    return [s for _, s in stdlib_module_sentences(min_chars, max_chars, modules)]


def python_version() -> str:
    return sys.version.split()[0]


def load_tensor_data(path: str | Path) -> TensorData:
    """Load ``x`` (and optional integer ``y``) from a ``.npz`` or a ``.pt`` dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                blob = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is a corrupt file for the user
        raise UserError(f"cannot read data file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(blob, dict) or "x" not in blob:
        raise UserError(f"data file {path} must hold an array named 'x' (and optionally 'y')")
    x = torch.as_tensor(blob["x"])
    x = x.float() if x.is_floating_point() else x
    y = blob.get("y")
    return TensorData((x,), None if y is None else torch.as_tensor(y).long())
