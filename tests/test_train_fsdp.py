"""FSDP2 and checkpoint portability under torchrun on 2 CPU ranks (gloo), and rank invariants.

- a checkpoint written by FSDP on 2 ranks resumes on 1 process and under DDP on 2 ranks, and
  one written by 1 process resumes under FSDP: each equals 4 steps straight (clipping active);
- after training (DDP and FSDP, HAD with a learned bias) the bias tables and the static scales
  are bit-identical on every rank.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import binattn
from binattn.errors import UserError
from binattn.models import digits_vit
from binattn.train import TrainConfig, checkpoint, data, train
from binattn.train.parallel import _named, _numbered, shard_units

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SCRIPT = textwrap.dedent("""
    import faulthandler, json, os, sys, warnings
    import torch, torch.distributed as dist, binattn
    faulthandler.enable()  # a C++ abort mid-run prints every thread's Python stack
    from binattn.models import digits_vit
    from binattn.train import data, train
    from binattn.train.parallel import full_tensors, is_sharded
    from binattn.train.sites import bias_parameter_names, find_sites
    warnings.filterwarnings("ignore")
    args = json.loads(sys.argv[1])
    dump = args.pop("dump", None)
    torch.manual_seed(0)
    fp = digits_vit(dim=32, depth=2, heads=2).eval()
    gm = binattn.binarize(fp, fp.example_inputs(args["batch_size"]),
                          binattn.BinarizeConfig(bias="relpos"))
    digits = data.digits()
    result = train(gm, digits.subset(range(256)), lr=1e-3, progress=False,
                   eval_data=digits.subset(range(256, 320)), **args)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if dump:
        tables = full_tensors(gm, bias_parameter_names(gm))
        scales = [(s.q_scale, s.k_scale) for s in find_sites(gm) if s.q_scale is not None]
        torch.save({"tables": tables, "scales": scales, "metrics": result.metrics,
                    "plain": rank == 0 and not is_sharded(result.model),
                    "model": result.model.state_dict() if rank == 0 else {}}, f"{dump}.{rank}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    # the work is done and written: skip interpreter teardown, where gloo's worker threads
    # can abort the process ("terminate called without an active exception", pytorch#179291)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")
ENV = dict(os.environ, OMP_NUM_THREADS="1", BINATTN_KERNELS="reference")


def _run(tmp: Path, args: dict, ranks: int) -> None:
    script = tmp / "fsdp_train.py"
    script.write_text(SCRIPT)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks)] if ranks > 1 else [sys.executable])
    proc = subprocess.run([*launch, str(script), json.dumps(args)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "Warning" not in line]
    assert proc.returncode == 0, "\n".join(errors)[-6000:]


def _phase(tmp: Path, name: str, mode: str, ranks: int, stop_at=None, start=None) -> dict:
    """Train to ``stop_at`` (or the end, step 4) from ``start``'s checkpoint (or from scratch)."""
    path = tmp / f"{name}.ckpt"
    if start is not None:
        shutil.copy(tmp / f"{start}.ckpt", path)
    args = dict(recipe="binaryattention", steps=4, stop_at=stop_at, batch_size=32 // ranks,
                grad_clip=0.05, parallel=mode, checkpoint=str(path))
    _run(tmp, args, ranks)
    return checkpoint.load(path)


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a["step"] == b["step"] == 4, what
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-4, atol=1e-5,
                                   msg=f"{what}: {name}")
    for i, state in b["optimizer"]["state"].items():
        torch.testing.assert_close(a["optimizer"]["state"][i]["exp_avg"], state["exp_avg"],
                                   rtol=1e-4, atol=1e-6, msg=f"{what}: exp_avg {i}")


def test_fsdp_checkpoints_resume_on_other_rank_counts_and_modes(tmp_path):
    straight = _phase(tmp_path, "straight", "ddp", 1)
    fsdp_half = _phase(tmp_path, "fsdp2", "fsdp", 2, stop_at=2)
    assert fsdp_half["step"] == 2 and set(fsdp_half["model"]) == set(straight["model"])
    assert isinstance(fsdp_half["optimizer"]["param_groups"][0]["params"][0], int)
    _assert_same(_phase(tmp_path, "to_one", "ddp", 1, start="fsdp2"), straight, "fsdp2 -> 1")
    _assert_same(_phase(tmp_path, "to_ddp", "ddp", 2, start="fsdp2"), straight, "fsdp2 -> ddp2")
    _phase(tmp_path, "one", "ddp", 1, stop_at=2)
    _assert_same(_phase(tmp_path, "to_fsdp", "fsdp", 2, start="one"), straight, "1 -> fsdp2")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_bias_tables_and_static_scales_are_bit_identical_across_ranks(tmp_path, mode):
    dump = tmp_path / "state"
    _run(tmp_path, dict(recipe="had", steps=4, batch_size=16, parallel=mode,
                        checkpoint=str(tmp_path / "had.ckpt"), dump=str(dump)), 2)
    ranks = [torch.load(f"{dump}.{r}", weights_only=True) for r in (0, 1)]
    assert ranks[0]["tables"] and len(ranks[0]["scales"]) == 2
    for name, table in ranks[0]["tables"].items():
        assert torch.equal(table, ranks[1]["tables"][name]), name
    for (q0, k0), (q1, k1) in zip(ranks[0]["scales"], ranks[1]["scales"]):
        assert torch.equal(q0, q1) and torch.equal(k0, k1) and float(q0) != 1.0
    saved = checkpoint.load(tmp_path / "had.ckpt")["model"]
    assert ranks[0]["plain"] and "accuracy" in ranks[0]["metrics"]
    for name, value in saved.items():   # rank 0's returned model is the saved one
        assert torch.equal(ranks[0]["model"][name], value), name


def test_parallel_option_is_checked():
    with pytest.raises(UserError, match="parallel must be one of"):
        TrainConfig(parallel="zero3")
    assert TrainConfig().parallel == "ddp"


def test_shard_units_graph_module_is_one_unit_eager_blocks_each():
    fp = digits_vit(dim=32, depth=2, heads=2).eval()
    blocks = shard_units(fp)
    assert len(blocks) == 2 and all(type(b).__name__ == "Block" for b in blocks)
    gm = binattn.binarize(fp, fp.example_inputs(4), binattn.BinarizeConfig(bias="relpos"))
    assert shard_units(gm) == []


def test_optimizer_state_numbering_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight]},
                             {"params": [model[0].bias, model[1].bias]}])
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    fqns = [["0.weight", "1.weight"], ["0.bias", "1.bias"]]
    named = _named(state, fqns)
    assert named["param_groups"][1]["params"] == ["0.bias", "1.bias"]
    back = _numbered(named, fqns)
    assert back["param_groups"] == state["param_groups"]
    assert torch.equal(back["state"][3]["exp_avg"], state["state"][3]["exp_avg"])


def test_train_cli_has_parallel_option():
    from click.testing import CliRunner

    from binattn.cli.train_cmd import command

    out = CliRunner().invoke(command, ["--help"]).output
    assert "--parallel [ddp|fsdp]" in out and "FSDP2" in out


def test_train_cli_under_fsdp_writes_the_trained_model_once(tmp_path):
    torch.manual_seed(0)
    torch.save(digits_vit(dim=32, depth=2, heads=2).eval(), tmp_path / "vit.pt")
    out = tmp_path / "vit_b.pt2"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "binattn.cli", "train",
                           str(tmp_path / "vit.pt"), "--trust-pickle", "--data", "digits",
                           "--steps", "2", "--batch-size", "16", "--parallel", "fsdp",
                           "--quiet", "-o", str(out)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("wrote ") == 1
    exported = torch.export.load(str(out)).state_dict
    saved = checkpoint.load(f"{out}.ckpt")["model"]
    assert set(exported) == set(saved)
    assert all(torch.equal(exported[name], saved[name]) for name in saved)
