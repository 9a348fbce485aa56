"""A small, plain Vision Transformer (cls token + patch grid) built from standard PyTorch.

Its attention is ``F.scaled_dot_product_attention`` (as in timm/HF), or the hand-written
``softmax(q·kᵀ·scale)·v`` with ``fused_attn=False``, so the binarize pass meets the same shapes
it meets in third-party models. Token layout: N = 1 + Gh·Gw. Optionally a small 3×3-conv stem
before the patch embedding (``stem_channels``), for small-data tasks where bare 2×2 patches
carry too little. What it is not: a pretrained model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyViTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    fused_attn: bool = True
    stem_channels: tuple[int, ...] = ()  # 3×3 conv + GELU layers before the patch embedding

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, cfg: TinyViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.fused_attn)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(hidden, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_stem(in_chans: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Same-size 3×3 convolutions with GELU: local features before the patch grid (the token
    grid is unchanged, each token just sees a wider receptive field)."""
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(in_chans, width, 3, padding=1), nn.GELU()]
        in_chans = width
    return nn.Sequential(*layers)


class TinyViT(nn.Module):
    """ViT: (optional conv stem,) patch embedding, cls token, learned positions, ``depth``
    pre-norm blocks, head."""

    def __init__(self, cfg: TinyViTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or TinyViTConfig()
        gh, gw = cfg.grid
        if cfg.stem_channels:  # only built when asked: the plain ViT's init stays the same
            self.stem = conv_stem(cfg.in_chans, cfg.stem_channels)
        embed_in = cfg.stem_channels[-1] if cfg.stem_channels else cfg.in_chans
        self.patch_embed = nn.Conv2d(embed_in, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + gh * gw, cfg.dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.stem_channels:
            images = self.stem(images)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images)[:, 0])

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor]:
        c = self.cfg
        return (torch.randn(batch, c.in_chans, c.image_size, c.image_size),)


def demo_vit(**overrides) -> TinyViT:
    """The demo's model: 32×32 RGB, patch 4 → 8×8 grid + cls (N = 65), 4 blocks of 4 heads."""
    return TinyViT(TinyViTConfig(**overrides))


def digits_vit(**overrides) -> TinyViT:
    """The digits benchmark's model: 8×8 grey, patch 2 → 4×4 grid + cls (N = 17)."""
    base = dict(image_size=8, patch_size=2, in_chans=1, num_classes=10, dim=64, depth=4, heads=4)
    base.update(overrides)
    return TinyViT(TinyViTConfig(**base))
