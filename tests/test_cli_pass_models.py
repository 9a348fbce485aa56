"""``binattn inspect`` prints the site table for every third-party model of the coverage list,
loaded the way users hand them over: torch.save'd modules and Hugging Face / diffusers
directories (save_pretrained)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from binattn.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def inspect_json(*args) -> dict:
    result = CliRunner().invoke(main, ["inspect", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_timm_deit_pickled(tmp_path):
    import timm
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).eval(),
               tmp_path / "deit.pt")
    data = inspect_json(tmp_path / "deit.pt", "--trust-pickle")  # input from pretrained_cfg
    assert data["num_rewritten"] == 12 and data["sites"][0]["shape"]["Nq"] == 197


def test_hf_gpt2_and_vit_directories(tmp_path):
    from transformers import GPT2Config, GPT2Model, ViTConfig, ViTModel

    GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                         bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    data = inspect_json(tmp_path / "gpt2", "--input-shape", "2,9")
    assert data["num_rewritten"] == 2 and data["sites"][0]["shape"]["Nq"] == 9
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128)).save_pretrained(
        tmp_path / "vit")
    data = inspect_json(tmp_path / "vit")  # input from config.image_size
    assert data["num_rewritten"] == 2 and data["sites"][0]["shape"]["Nq"] == 17


def test_diffusers_dit_directory(tmp_path):
    from diffusers import DiTTransformer2DModel

    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                          num_layers=2, sample_size=8, patch_size=2,
                          num_embeds_ada_norm=10).save_pretrained(tmp_path / "dit")
    data = inspect_json(tmp_path / "dit")
    assert data["num_rewritten"] == 2 and data["sites"][0]["shape"]["Nq"] == 16


def test_torch_encoder_and_bare_mha_pickled(tmp_path):
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    torch.save(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(),
               tmp_path / "enc.pt")
    data = inspect_json(tmp_path / "enc.pt", "--trust-pickle", "--input-shape", "2,7,32")
    assert data["num_rewritten"] == 2
    torch.save(torch.nn.MultiheadAttention(32, 4, batch_first=True).eval(), tmp_path / "mha.pt")
    data = inspect_json(tmp_path / "mha.pt", "--trust-pickle", "--input-shape",
                        "2,7,32;2,7,32;2,7,32")
    assert data["num_rewritten"] == 1 and data["sites"][0]["matcher"] == "matmul-softmax"
