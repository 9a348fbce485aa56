"""Default training settings by kind of data: ``binattn train`` takes every option the user did
not give from the preset of its ``--data``.

Two presets, each the recipe measured in docs/training.md for that kind of model:

- ``tensors`` (images and other tensors: ``digits``, ``cluttered-digits``, ``.npz``/``.pt``):
  the ViT recipe — 60 epochs, batch 64, AdamW 3e-4, relative-position bias (BinaryAttention),
  float32, fixed shapes.
- ``text`` (``english-mix``, ``stdlib-text``, ``.txt``): the MiniLM english-mix recipe — 4500
  steps, batch 16, AdamW 2e-4 (weight decay 0.01), a 1-D relative-position bias
  (``relpos_1d``, at 10× the learning rate), attention-map KL and hidden-state MSE beside the
  embedding loss, 128 tokens, length buckets of 50 steps, bfloat16 autocast where the device
  runs it fast (CUDA with bf16; CPUs with AVX-512 BF16 or AMX).

What it does not: validate values (``TrainConfig`` and the CLI's click types do) or train.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .config import TrainConfig

TEXT_DATA = ("english-mix", "stdlib-text")


@dataclass(frozen=True)
class Preset:
    """The preset values of ``binattn train``'s options (None: the option's own default)."""

    epochs: Optional[float]
    steps: Optional[int]
    batch_size: int
    lr: float
    bias: str
    max_len: int
    attn_weight: Optional[float]
    hidden_weight: float
    length_buckets: int
    autocast: Optional[str]
    weight_decay: float
    bias_lr_mult: float


def _config(**own: Any) -> Preset:
    """A preset: ``TrainConfig``'s own defaults (one place for them) where ``own`` is silent;
    ``bias`` and ``max_len`` are the CLI's (the capture's and the tokenizer's)."""
    fields = TrainConfig.__dataclass_fields__
    values = {name: fields[name].default for name in Preset.__dataclass_fields__
              if name in fields}
    return Preset(**{**values, "bias": "auto", "max_len": 128, **own})


PRESETS = {
    "tensors": _config(),
    "text": _config(steps=4500, batch_size=16, lr=2e-4, bias="relpos_1d", attn_weight=1.0,
                    hidden_weight=1.0, length_buckets=50, autocast="bfloat16",
                    weight_decay=0.01, bias_lr_mult=10.0),
}


def data_kind(spec: str) -> str:
    """``"text"`` for the built-in text sets and ``.txt`` files, else ``"tensors"``."""
    return "text" if spec in TEXT_DATA or Path(spec).suffix == ".txt" else "tensors"


def fast_bfloat16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 matrix products faster than float32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve(spec: str, device: str, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(kind, options)``: ``given`` (the user's values, None where not given) completed from
    the preset of ``spec``'s kind. The text preset's bfloat16 autocast applies only where
    :func:`fast_bfloat16`; elsewhere it stays float32."""
    kind = data_kind(spec)
    values = asdict(PRESETS[kind])
    if values["autocast"] is not None and not fast_bfloat16(device):
        values["autocast"] = None
    return kind, {name: given[name] if given.get(name) is not None else value
                  for name, value in values.items()}


def describe(kind: str, options: dict[str, Any]) -> str:
    """One line naming the preset and the values it set."""
    shown = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in options.items()
                      if v is not None and not (k == "epochs" and options.get("steps")))
    return f"{kind} preset: {shown}"
