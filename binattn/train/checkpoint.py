"""Training checkpoints: atomic save, safe load (``weights_only=True``), resume state.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values: the
model's ``state_dict`` (learned biases and calibrated static scales included), the AdamW state,
the step, the torch RNG state, the config and the history. A sharded (FSDP) run gathers the
same full state on rank 0 and writes it with :func:`write`, so one file resumes a run on any
number of ranks, DDP or FSDP. Saving writes a temporary file next to the target and renames
it, so an interrupted save never leaves a half-written checkpoint.

What it does not: rebuild the model — load it into the same binarized model (same pass config).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import UserError

FORMAT = "binattn-train-checkpoint/1"


def save(path: str | Path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
         step: int, config: dict, history: list[dict], extra: Optional[dict] = None) -> Path:
    """Write the checkpoint of ``model`` and ``optimizer`` atomically; returns its path."""
    return write(path, model.state_dict(),
                 None if optimizer is None else optimizer.state_dict(), step, config, history,
                 extra)


def write(path: str | Path, model_state: dict, optimizer_state: Optional[dict], step: int,
          config: dict, history: list[dict], extra: Optional[dict] = None) -> Path:
    """Write a checkpoint from state dicts (a sharded run's gathered full state) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "step": int(step), "config": config, "history": history,
            "model": model_state, "optimizer": optimizer_state,
            "rng": torch.get_rng_state(), "extra": extra or {}}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a binattn training checkpoint")
    return blob


def restore(blob: dict, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
            restore_rng: bool = True) -> int:
    """Load model (and optimizer, RNG) state from a loaded checkpoint; returns its step."""
    missing, unexpected = model.load_state_dict(blob["model"], strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint does not match this model: missing {list(missing)[:5]}, "
                        f"unexpected {list(unexpected)[:5]} (binarize with the same config)")
    if optimizer is not None and blob.get("optimizer") is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if restore_rng and blob.get("rng") is not None:
        torch.set_rng_state(blob["rng"])
    return int(blob["step"])
