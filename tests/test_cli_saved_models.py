"""Saved models through the CLI and ``binattn.model_io``: Hugging Face directories (small random
configs of the real transformers classes, ``save_pretrained``) converted to ``.pt2`` load again
(in a process without transformers), take ``attention_mask``, have dynamic batch and sequence
dims and equal the original model run with SDPA replaced by binary attention by hand; encoder-
decoder, speech and vision-language inputs are synthesized or given with ``--input``; ``-o``
refuses an existing file without ``--force``; an explicit ``--grid`` must fit the sequence."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import binattn
from binattn.cli import main
from binattn.model_io import load
from tests.test_cli_pass import assert_one_line_error
from tests.test_pass_helpers import sdpa_as_binary_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ATOL = 1e-4


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Directories of small random Hugging Face models."""
    import transformers as tr

    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tr.BertModel(tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(d / "bert")
    tr.GPT2Model(tr.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(d / "gpt2")
    tr.T5Model(tr.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16,
                           vocab_size=100, decoder_start_token_id=0)).save_pretrained(d / "t5")
    tr.WhisperModel(tr.WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=16, max_target_positions=32, vocab_size=100, pad_token_id=0,
        bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)).save_pretrained(d / "whisper")
    tr.CLIPModel(tr.CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=32, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8),
        projection_dim=16)).save_pretrained(d / "clip")
    return d


def original(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path)).eval()


def assert_outputs_close(got: dict, want, **options):
    """Every tensor the .pt2 returns equals the same field of the model's ModelOutput."""
    assert isinstance(got, dict) and got
    for key, value in got.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, want[key], atol=ATOL, rtol=1e-4, msg=key)


def convert(src, out, *extra):
    result = run("convert", src, "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_text_model_pt2_loads_pads_and_has_dynamic_dims(hf, tmp_path):
    out = tmp_path / "bert.pt2"
    result = convert(hf / "bert", out, "--scale-mode", "none")
    assert "inputsinput_ids[*,*],attention_mask[*,*]" in "".join(result.stdout.split())
    program = torch.export.load(out)
    names = [s.arg.name for s in program.graph_signature.input_specs
             if s.kind.name == "USER_INPUT"]
    assert names == ["input_ids", "attention_mask"]
    m, bert = program.module(), original(hf / "bert")
    torch.manual_seed(1)
    for batch, seq in ((2, 16), (3, 10), (1, 23)):       # dynamic batch and sequence
        ids = torch.randint(0, 100, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq - 4:] = 0                            # padding
        with torch.no_grad(), sdpa_as_binary_attention(scale_mode="none") as calls:
            want = bert(input_ids=ids, attention_mask=mask)
        assert calls
        assert_outputs_close(m(ids, mask), want)
    # the mask is an input, not a constant: padded tokens do not change the real ones
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 8:] = 0
    other = ids.clone()
    other[:, 8:] = (other[:, 8:] + 7) % 100
    a = m(ids, mask)["last_hidden_state"][:, :8]
    torch.testing.assert_close(a, m(other, mask)["last_hidden_state"][:, :8])
    torch.testing.assert_close(a, m(ids[:, :8], mask[:, :8])["last_hidden_state"],
                               atol=ATOL, rtol=1e-4)
    assert not torch.allclose(a, m(other, torch.ones_like(mask))["last_hidden_state"][:, :8])


def test_relpos_1d_bias_keeps_the_sequence_dynamic(hf, tmp_path):
    """``--bias relpos_1d`` on a text model: the saved program keeps a dynamic sequence length
    (the table's index is built from each call's lengths) and, the table starting at zero,
    gives what the program without a bias gives."""
    biased, plain = tmp_path / "biased.pt2", tmp_path / "plain.pt2"
    result = convert(hf / "bert", biased, "--bias", "relpos_1d")
    assert "inputsinput_ids[*,*],attention_mask[*,*]" in "".join(result.stdout.split())
    convert(hf / "bert", plain)
    program = torch.export.load(biased)
    tables = [n for n, _ in program.named_parameters() if "binattn_bias" in n]
    assert len(tables) == 1 and program.state_dict[tables[0]].shape == (65, 2)   # ±32, 2 heads
    torch.manual_seed(2)
    for batch, seq in ((2, 9), (1, 40)):
        ids = torch.randint(0, 100, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        got = program.module()(ids, mask)["last_hidden_state"]
        want = torch.export.load(plain).module()(ids, mask)["last_hidden_state"]
        torch.testing.assert_close(got, want)


def test_pt2_loads_without_transformers(hf, tmp_path):
    out = tmp_path / "gpt2.pt2"
    convert(hf / "gpt2", out)
    code = ("import sys, torch, binattn\n"
            f"m = torch.export.load({str(out)!r}).module()\n"
            "out = m(torch.zeros(3, 9, dtype=torch.long), torch.ones(3, 9, dtype=torch.long))\n"
            "print(sorted(out), tuple(out['last_hidden_state'].shape))\n"
            "print('transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["['last_hidden_state'] (3, 9, 32)", "False"]


@pytest.mark.parametrize("name, inputs, nq", [
    ("t5", lambda: dict(input_ids=torch.randint(0, 100, (3, 11)),
                        attention_mask=torch.ones(3, 11, dtype=torch.long),
                        decoder_input_ids=torch.randint(0, 100, (3, 5))), [16, 8, 8]),
    ("whisper", lambda: dict(input_features=torch.randn(3, 8, 32),
                             decoder_input_ids=torch.randint(0, 100, (3, 5))), [16, 8, 8]),
    ("clip", lambda: dict(input_ids=torch.randint(0, 100, (3, 7)),
                          pixel_values=torch.randn(3, 3, 32, 32),
                          attention_mask=torch.ones(3, 7, dtype=torch.long)), [17, 16]),
])
def test_multi_input_models_synthesized_converted_and_reloaded(hf, tmp_path, name, inputs, nq):
    data = json.loads(run("inspect", hf / name, "--json").stdout)
    assert data["num_rewritten"] == len(nq) and data["num_skipped"] == 0
    assert [s["shape"]["Nq"] for s in data["sites"]] == nq
    out = tmp_path / f"{name}.pt2"
    convert(hf / name, out)
    program = torch.export.load(out)
    example = inputs()                                   # another batch and sequence length
    got = program.module()(*example.values())           # positional, in the forward's order
    with torch.no_grad(), sdpa_as_binary_attention():
        want = original(hf / name)(**example)
    assert_outputs_close(got, want)
    # and the saved model works with the other verbs
    data = json.loads(run("inspect", out, "--json").stdout)
    assert data["num_rewritten"] == len(nq)
    result = run("asic", out, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["sites"]) == len(nq)


def test_explicit_inputs(hf, tmp_path):
    data = json.loads(run("inspect", hf / "t5", "--json", "--input", "input_ids=1,12:int64",
                          "--input", "decoder_input_ids=1,5:int64").stdout)
    assert [(s["shape"]["Nq"], s["shape"]["Nk"]) for s in data["sites"]] == [(12, 12), (5, 5),
                                                                             (5, 12)]
    assert_one_line_error(run("inspect", hf / "t5", "--input", "input_ids=1,12:int64"),
                          "'decoder_input_ids'")
    assert_one_line_error(run("inspect", hf / "bert", "--input", "tokens=1,12:int64"),
                          "no input 'tokens'")
    assert_one_line_error(run("inspect", hf / "bert", "--input", "input_ids=1,x:int64"),
                          "--input")
    assert_one_line_error(run("inspect", hf / "bert", "--input", "input_ids=1,4:int65"),
                          "unknown dtype 'int65'")
    assert_one_line_error(run("inspect", hf / "bert", "--input", "input_ids=1,4:int64",
                              "--input-shape", "1,4"), "not both")
    out = tmp_path / "bert.pt2"
    convert(hf / "bert", out)
    assert_one_line_error(run("inspect", out, "--input", "input_ids=1,4:int64"),
                          "also takes the input 'attention_mask'")
    data = json.loads(run("inspect", out, "--json", "--input", "input_ids=1,9:int64",
                          "--input", "attention_mask=1,9:int64").stdout)
    assert data["num_rewritten"] == 1
    onnx = tmp_path / "bert.onnx"
    result = run("export", hf / "bert", "--format", "onnx", "-o", onnx, "--input",
                 "input_ids=2,6:int64", "--input", "attention_mask=2,6:int64")
    assert result.exit_code == 0, result.output
    assert "max |err|" in result.stdout


def test_main_input_the_config_does_not_describe_is_named(tmp_path):
    from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerModel

    TimeSeriesTransformerModel(TimeSeriesTransformerConfig(
        prediction_length=4, context_length=8, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, lags_sequence=[1],
        encoder_ffn_dim=32, decoder_ffn_dim=32)).save_pretrained(tmp_path / "ts")
    assert_one_line_error(run("inspect", tmp_path / "ts"), "--input past_values=")


def test_decoder_kv_cache_is_off_for_capture(hf):
    gpt2 = original(hf / "gpt2")
    assert gpt2.config.use_cache
    ids = torch.randint(0, 100, (2, 10))
    gm = binattn.binarize(gpt2, (ids,), binattn.BinarizeConfig(mode="float"))  # no cache error
    assert gpt2.config.use_cache                       # the model is left as it was
    with torch.no_grad():
        torch.testing.assert_close(gm(ids).last_hidden_state,
                                   gpt2(ids, use_cache=False).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)


def test_python_api_float_mode_exact_with_dynamic_dims(hf):
    loaded = load(hf / "t5")
    assert loaded.names == ("input_ids", "attention_mask", "decoder_input_ids")
    gm = binattn.binarize(loaded.model, loaded.inputs, binattn.BinarizeConfig(mode="float"),
                          dynamic_shapes=loaded.dynamic_shapes)
    program = torch.export.export(gm, loaded.inputs, dynamic_shapes=loaded.dynamic_shapes)
    ids, dec = torch.randint(0, 100, (3, 13)), torch.randint(0, 100, (3, 6))
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        want = original(hf / "t5")(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    assert_outputs_close(program.module()(ids, mask, dec), want)


def test_output_exists_needs_force(hf, tmp_path):
    out = tmp_path / "bert.pt2"
    out.write_bytes(b"keep me")
    assert_one_line_error(run("convert", hf / "bert", "-o", out), "--force")
    assert out.read_bytes() == b"keep me"
    onnx, desc = tmp_path / "x.onnx", tmp_path / "t.json"
    onnx.write_bytes(b"keep me")
    desc.write_bytes(b"keep me")
    assert_one_line_error(run("export", hf / "bert", "--format", "onnx", "-o", onnx), "--force")
    assert_one_line_error(run("asic", hf / "bert", "-o", desc), "--force")
    assert onnx.read_bytes() == desc.read_bytes() == b"keep me"
    convert(hf / "bert", out, "--force")
    assert torch.export.load(out) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_grid_that_does_not_fit_is_an_error(tmp_path):
    from binattn.models import demo_vit

    torch.manual_seed(0)
    torch.save(demo_vit(depth=1).eval(), tmp_path / "vit.pt")
    out = tmp_path / "vit.pt2"
    assert_one_line_error(run("convert", tmp_path / "vit.pt", "--trust-pickle", "-o", out,
                              "--bias", "relpos", "--grid", "3x3"), "--grid 3x3 does not fit")
    assert not out.exists()
    result = convert(tmp_path / "vit.pt", out, "--trust-pickle", "--bias", "relpos",
                     "--grid", "8x8")
    assert "relpos 8×8+1" in result.stdout
    # the pass takes the model's own prefix (1 cls token), not N − 3·3 = 56 "prefix" tokens
    gm = binattn.binarize(demo_vit(depth=1).eval(), (torch.randn(2, 3, 32, 32),),
                          binattn.BinarizeConfig(bias="relpos", grid=(3, 3)))
    assert gm.meta["binattn_report"].rows[0].bias == \
        "head (relpos: config grid 3×3 + 1 prefix ≠ N=65)"
    # and, where the model declares none, no more than one
    encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    gm = binattn.binarize(encoder, (torch.randn(2, 65, 16),),
                          binattn.BinarizeConfig(bias="relpos", grid=(3, 3)))
    assert "leaves 56 of N=65 tokens outside the grid" in gm.meta["binattn_report"].rows[0].bias
    gm = binattn.binarize(encoder, (torch.randn(2, 65, 16),),
                          binattn.BinarizeConfig(bias="relpos", grid=(8, 8)))
    assert gm.meta["binattn_report"].rows[0].bias == "relpos 8×8+1"


def test_random_bytes_are_not_a_torch_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(run("inspect", junk), "not a torch file")
    assert "holds code" not in run("inspect", junk).stderr


def test_pt2_saved_with_model_output_classes_loads(hf, tmp_path):
    """A .pt2 exported straight from a transformers model (ModelOutput in its output spec)
    loads in a fresh process: binattn imports the class's module, which registers it."""
    bert = original(hf / "bert")
    ids = torch.randint(0, 100, (2, 8))
    torch.export.save(torch.export.export(bert, (ids,), strict=False), tmp_path / "old.pt2")
    proc = subprocess.run([sys.executable, "-m", "binattn.cli", "inspect",
                           str(tmp_path / "old.pt2"), "--json"], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["num_rewritten"] == 1


def test_named_forward_survives_deepcopy_and_refuses_a_cache_output(hf):
    import copy

    from transformers import DynamicCache

    from binattn.model_inputs import plain_outputs

    loaded = load(hf / "gpt2")
    clone = copy.deepcopy(loaded.model)
    assert clone.forward.__self__ is clone
    assert sorted(clone(*loaded.inputs)) == ["last_hidden_state"]   # a dict, no cache
    with pytest.raises(binattn.errors.UserError, match=r"past_key_values.*use_cache=False"):
        plain_outputs({"last_hidden_state": torch.ones(1), "past_key_values": DynamicCache()})
