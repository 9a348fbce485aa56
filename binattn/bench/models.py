"""The models of the end-to-end table (issue 16 point 4): real third-party classes, random
weights, each at two sizes.

``full`` is the GPU table's size (the issue's token counts and head shapes, fewer layers where
said); ``small`` is the CPU table's, ``--quick``'s and the tests' (one or two layers, fewer
tokens or heads where the full size would take more than a second a forward on two cores). A
builder returns a :class:`Built`: the model in eval mode on the device and dtype asked for, its
example inputs (positional and keyword) and what the table says about its size. What it does
not: load weights or tokenizers (nothing is downloaded), or build the paths (``e2e.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

SIZES = ("full", "small")


@dataclass
class Built:
    """A built model, its inputs and its size as the table reports it."""

    model: nn.Module
    args: tuple
    kwargs: dict[str, Any]
    library: str        # "timm", "transformers" or "diffusers": which drop-in applies
    batch: int
    tokens: str         # the attention's sequence length(s), as printed
    layers: str         # how many blocks, as printed
    heads: int
    head_dim: int
    q_numel: int        # one layer's q (batch × tokens × heads × head_dim)


@dataclass(frozen=True)
class ModelCase:
    name: str
    title: str
    build: Callable[[str, torch.device, torch.dtype], Built]


def _gen(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(1)


def _randn(shape: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(device), device=device, dtype=dtype)


def _place(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model`` in eval mode on ``device`` in ``dtype``, but the modules a diffusers model
    keeps in float32 (``_keep_in_fp32_modules``: Wan's rope, norms, time embedder), as
    ``from_pretrained(torch_dtype=...)`` keeps them."""
    model = model.eval().to(device, dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, module in model.named_modules():
        if dtype != torch.float32 and any(k in name.split(".") for k in keep):
            module.float()
    return model


def vit_b(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """timm ViT-B/16 at 224²: batch 64, 12 layers (full); batch 8, 1 layer (small)."""
    import timm

    batch, depth = (64, 12) if size == "full" else (8, 1)
    torch.manual_seed(0)
    model = _place(timm.create_model("vit_base_patch16_224", pretrained=False, depth=depth),
                   device, dtype)
    x = _randn((batch, 3, 224, 224), device, dtype)
    return Built(model, (x,), {}, "timm", batch, "197", str(depth), 12, 64,
                 batch * 197 * 768)


def vit_b_1024(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """timm ViT-B/16 at 1024² (4096 patches): batch 4, 12 layers (full); 1, 1 (small)."""
    import timm

    batch, depth = (4, 12) if size == "full" else (1, 1)
    torch.manual_seed(0)
    model = _place(timm.create_model("vit_base_patch16_224", pretrained=False, img_size=1024,
                                     depth=depth), device, dtype)
    x = _randn((batch, 3, 1024, 1024), device, dtype)
    return Built(model, (x,), {}, "timm", batch, "4097", str(depth), 12, 64,
                 batch * 4097 * 768)


def dit_xl(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """diffusers DiT-XL/2 width (16 heads × 72, hidden 1152, patch 2): 512² (latent 64², 1024
    tokens), batch 8, 4 layers (full); 256² (256 tokens), batch 1, 1 layer (small)."""
    import diffusers

    batch, latent, layers = (8, 64, 4) if size == "full" else (1, 32, 1)
    torch.manual_seed(0)
    model = _place(diffusers.DiTTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
        num_layers=layers, sample_size=latent, patch_size=2, num_embeds_ada_norm=1000),
        device, dtype)
    tokens = (latent // 2) ** 2
    kwargs = {"hidden_states": _randn((batch, 4, latent, latent), device, dtype),
              "timestep": torch.arange(batch, device=device) * 7 % 1000,
              "class_labels": torch.arange(batch, device=device) * 13 % 1000}
    return Built(model, (), kwargs, "diffusers", batch, str(tokens), str(layers), 16, 72,
                 batch * tokens * 1152)


def _flux_ids(side: int, text: int, device: torch.device, dtype: torch.dtype):
    rows, cols = torch.meshgrid(torch.arange(side, device=device),
                                torch.arange(side, device=device), indexing="ij")
    img = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(side * side, 3)
    return img.to(dtype), torch.zeros(text, 3, device=device, dtype=dtype)


def flux(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """diffusers Flux transformer (24 heads × 128 full, 4 × 128 small): 4096 image + 512 text
    tokens, 1 double + 2 single blocks, batch 1 (full); 256 + 32 tokens, 1 + 1 (small)."""
    import diffusers

    heads, side, text, double, single, joint = ((24, 64, 512, 1, 2, 4096) if size == "full"
                                                else (4, 16, 32, 1, 1, 64))
    torch.manual_seed(0)
    model = _place(diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
        attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=joint,
        pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)), device, dtype)
    img_ids, txt_ids = _flux_ids(side, text, device, dtype)
    kwargs = {"hidden_states": _randn((1, side * side, 64), device, dtype),
              "encoder_hidden_states": _randn((1, text, joint), device, dtype),
              "pooled_projections": _randn((1, 768), device, dtype),
              "timestep": torch.full((1,), 0.5, device=device, dtype=dtype),
              "img_ids": img_ids, "txt_ids": txt_ids}
    tokens = side * side + text
    return Built(model, (), kwargs, "diffusers", 1, f"{side * side}+{text}",
                 f"{double}+{single}", heads, 128, tokens * heads * 128)


def wan(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """diffusers Wan video transformer at 24 heads × 128 (full; 4 × 128 small): latent 16 × 64²
    with patch (1, 2, 2) = 16,384 tokens, 512 text tokens (cross-attention), 2 layers, batch 1
    (full); 4 × 32² = 1024 tokens, 32 text tokens, 1 layer (small)."""
    import diffusers

    heads, frames, latent, text, layers, text_dim = ((24, 16, 64, 512, 2, 4096)
                                                     if size == "full"
                                                     else (4, 4, 32, 32, 1, 64))
    torch.manual_seed(0)
    model = _place(diffusers.WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=text_dim, ffn_dim=4 * heads * 128, num_layers=layers), device, dtype)
    kwargs = {"hidden_states": _randn((1, 16, frames, latent, latent), device, dtype),
              "timestep": torch.full((1,), 500, device=device, dtype=torch.long),
              "encoder_hidden_states": _randn((1, text, text_dim), device, dtype)}
    tokens = frames * (latent // 2) ** 2
    return Built(model, (), kwargs, "diffusers", 1, f"{tokens} (+{text} cross)", str(layers),
                 heads, 128, tokens * heads * 128)


def video(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """diffusers HunyuanVideo transformer (its own 24 heads × 128 full, 4 × 128 small; patch
    (1, 2, 2), joint image + text attention): latent 16 × 64² = 16,384 + 256 text tokens, 1
    double + 1 single block, batch 1 (full); 2 × 32² = 512 + 32 text tokens (small)."""
    import diffusers

    heads, frames, latent, text = ((24, 16, 64, 256) if size == "full" else (4, 2, 32, 32))
    torch.manual_seed(0)
    model = _place(diffusers.HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=heads, attention_head_dim=128,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        text_embed_dim=4096 if size == "full" else 64, pooled_projection_dim=768,
        rope_axes_dim=(16, 56, 56)), device, dtype)
    text_dim = model.config.text_embed_dim
    kwargs = {"hidden_states": _randn((1, 16, frames, latent, latent), device, dtype),
              "timestep": torch.full((1,), 500, device=device, dtype=torch.long),
              "encoder_hidden_states": _randn((1, text, text_dim), device, dtype),
              "encoder_attention_mask": torch.ones(1, text, device=device, dtype=torch.long),
              "pooled_projections": _randn((1, 768), device, dtype),
              "guidance": torch.full((1,), 6000.0, device=device, dtype=dtype)}
    tokens = frames * (latent // 2) ** 2
    return Built(model, (), kwargs, "diffusers", 1, f"{tokens}+{text}", "1+1", heads, 128,
                 tokens * heads * 128)


def _token_ids(batch: int, tokens: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=_gen(device), device=device)


def bert(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """transformers BERT-base (BertConfig defaults: 12 layers, 12 heads × 64) at 512 tokens,
    batch 32 (full); 1 layer, batch 2 (small). SDPA attention, no padding mask."""
    import transformers

    batch, layers = (32, 12) if size == "full" else (2, 1)
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="sdpa")
    model = _place(transformers.BertModel(config), device, dtype)
    kwargs = {"input_ids": _token_ids(batch, 512, config.vocab_size, device)}
    return Built(model, (), kwargs, "transformers", batch, "512", str(layers), 12, 64,
                 batch * 512 * 768)


def llama(size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """transformers Llama decoder prefill, causal, GQA: Llama-3-8B width (32 q / 8 kv heads ×
    128, MLP 14336), 2048 tokens, 2 layers, batch 4 (full); 8 q / 2 kv heads × 64, 512
    tokens, 1 layer, batch 1 (small). No KV cache is kept (``use_cache=False``)."""
    import transformers

    full = size == "full"
    heads, kv, dim, mlp, layers, tokens, batch, vocab = (
        (32, 8, 4096, 14336, 2, 2048, 4, 128256) if full
        else (8, 2, 512, 1408, 1, 512, 1, 1024))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=tokens,
        attn_implementation="sdpa")
    model = _place(transformers.LlamaModel(config), device, dtype)
    kwargs = {"input_ids": _token_ids(batch, tokens, vocab, device), "use_cache": False}
    return Built(model, (), kwargs, "transformers", batch, f"{tokens} causal", str(layers),
                 heads, dim // heads, batch * tokens * dim)


MODELS: dict[str, ModelCase] = {case.name: case for case in (
    ModelCase("vit_b", "timm ViT-B/16 224²", vit_b),
    ModelCase("vit_b_1024", "timm ViT-B/16 1024²", vit_b_1024),
    ModelCase("dit_xl", "diffusers DiT-XL/2 512²", dit_xl),
    ModelCase("flux", "diffusers Flux 4096 tokens", flux),
    ModelCase("video", "diffusers HunyuanVideo 16,384 tokens", video),
    ModelCase("wan", "diffusers Wan video 16,384 tokens", wan),
    ModelCase("bert", "transformers BERT-base 512", bert),
    ModelCase("llama", "transformers Llama prefill 2048", llama),
)}


#: the issue's table, in order (by name only: ``vit_b_1024``, the older ViT row, and ``wan``,
#: a second video transformer: docs/e2e.md)
TABLE = ("vit_b", "dit_xl", "flux", "video", "bert", "llama")


def build(name: str, size: str, device: torch.device, dtype: torch.dtype) -> Built:
    """Build model ``name`` (a key of :data:`MODELS`) at ``size`` (``"full"``/``"small"``)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return MODELS[name].build(size, device, dtype)
