"""Which learned bias a site gets: the relpos token grid from the config or the model, else the
configured fallback (the report says which, and why).

What it does: infers (Gh, Gw) and the number of prefix tokens from ``BinarizeConfig`` or from
what the model makes clear (binattn's TinyViT ``cfg.grid``, timm's ``patch_embed.grid_size`` /
``num_prefix_tokens``, Hugging Face ViT ``config.image_size``/``patch_size``, diffusers
``sample_size``/``patch_size``), checked against the site's N = prefix + Gh·Gw (with a grid
from the config, the prefix is the config's, else the model's, else N − Gh·Gw when that is 0 or
1); builds the bias module. What it does not: guess a grid from N alone (a text model with
N = 1 + 3² is no image), or take most of a sequence as "prefix tokens".
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..ops.bias import DenseBias, HeadBias, RelPosBias, SequenceRelPosBias
from .config import BinarizeConfig

Grid = tuple[tuple[int, int], int]
# prefix tokens inferred as N − Gh·Gw for a given grid when neither the config nor the model
# says: none, or one cls token; any other count needs num_prefix_tokens
IMPLICIT_PREFIX = (0, 1)


def _pair(x: Any) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (tuple, list)) else (int(x), int(x))


def model_grid(model: Any) -> Optional[Grid]:
    """(grid, prefix tokens) the model declares, or None."""
    if model is None or not isinstance(model, nn.Module):
        return None
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "grid"):
        return _pair(cfg.grid), 1
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "grid_size", None) is not None:
        return _pair(embed.grid_size), int(getattr(model, "num_prefix_tokens", 1))
    hf = getattr(model, "config", None)
    if hf is not None and hasattr(hf, "image_size") and hasattr(hf, "patch_size"):
        image, patch = _pair(hf.image_size), _pair(hf.patch_size)
        return (image[0] // patch[0], image[1] // patch[1]), 1
    if hf is not None and getattr(hf, "sample_size", None) and getattr(hf, "patch_size", None):
        side = int(hf.sample_size) // int(hf.patch_size)
        return (side, side), 0
    return None


def relpos_grid(config: BinarizeConfig, model: Any, n_q: int,
                n_k: int) -> tuple[Optional[Grid], str]:
    """The grid for a site, or None with the reason it could not be inferred."""
    if n_q != n_k:
        return None, f"cross-attention (Nq={n_q} ≠ Nk={n_k})"
    declared = model_grid(model)
    if config.grid is not None:
        gh, gw = config.grid
        prefix = config.num_prefix_tokens
        if prefix is None and declared is not None:
            prefix = declared[1]
        if prefix is None and n_q - gh * gw not in IMPLICIT_PREFIX:
            return None, (f"config grid {gh}×{gw} leaves {n_q - gh * gw} of N={n_q} tokens "
                          "outside the grid; set num_prefix_tokens")
        prefix = n_q - gh * gw if prefix is None else prefix
        if prefix + gh * gw != n_q:
            return None, f"config grid {gh}×{gw} + {prefix} prefix ≠ N={n_q}"
        return ((gh, gw), prefix), ""
    if declared is None:
        return None, "no token grid known (set BinarizeConfig.grid)"
    (gh, gw), prefix = declared
    if config.num_prefix_tokens is not None:
        prefix = config.num_prefix_tokens
    if prefix + gh * gw != n_q:
        return None, f"model grid {gh}×{gw} + {prefix} prefix ≠ N={n_q}"
    return ((gh, gw), prefix), ""


def _seeded_init(bias: RelPosBias, seed: int, index: int) -> None:
    """trunc-normal(0.02) from a generator seeded by (seed, site index): binarizing the same
    model twice gives the same parameters (reproducible runs, resumable training)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + index)
    with torch.no_grad():
        bias.table.copy_(torch.nn.init.trunc_normal_(torch.empty_like(bias.table, device="cpu"),
                                                     std=0.02, generator=gen))


def make_bias(config: BinarizeConfig, model: Any, heads: int, n_q: int,
              n_k: int, index: int = 0) -> tuple[Optional[nn.Module], str]:
    """The bias module for site ``index`` and a short description for the report."""
    kind, note = config.bias, ""
    if kind == "relpos":
        grid, why = relpos_grid(config, model, n_q, n_k)
        if grid is not None:
            (gh, gw), prefix = grid
            bias = RelPosBias(heads, (gh, gw), prefix)
            _seeded_init(bias, config.seed, index)
            return bias, f"relpos {gh}×{gw}+{prefix}"
        kind, note = config.bias_fallback, f" (relpos: {why})"
    if kind == "relpos_1d":
        distance = config.relpos_distance
        return SequenceRelPosBias(heads, distance), f"relpos_1d ±{distance}{note}"
    if kind == "dense":
        return DenseBias(heads, n_q, n_k), f"dense{note}"
    if kind == "head":
        return HeadBias(heads), f"head{note}"
    return None, f"none{note}" if note else "-"
