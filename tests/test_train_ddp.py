"""Data-parallel training under torchrun: 2 CPU ranks (gloo) = one process with the full batch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import binattn
from binattn.models import digits_vit
from binattn.train import checkpoint, data, train

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SCRIPT = textwrap.dedent("""
    import faulthandler, os, sys, warnings
    import torch, binattn
    faulthandler.enable()  # a C++ abort mid-run prints every thread's Python stack
    from binattn.models import digits_vit
    from binattn.train import data, train
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    fp = digits_vit(dim=32, depth=2, heads=2).eval()
    gm = binattn.binarize(fp, fp.example_inputs(16), binattn.BinarizeConfig(bias="relpos"))
    train(gm, data.digits().subset(range(256)), recipe="binaryattention", steps=4,
          batch_size=16, lr=1e-3, checkpoint=sys.argv[1], progress=False)
    # the checkpoint is written: skip interpreter teardown, where gloo's worker threads can
    # abort the process ("terminate called without an active exception", pytorch#179291)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")


def test_two_ranks_match_one_process_with_the_whole_batch(tmp_path):
    script, ckpt = tmp_path / "ddp_train.py", tmp_path / "ddp.ckpt"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", BINATTN_KERNELS="reference")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), str(ckpt)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_state = checkpoint.load(ckpt)["model"]

    torch.manual_seed(0)
    fp = digits_vit(dim=32, depth=2, heads=2).eval()
    gm = binattn.binarize(fp, fp.example_inputs(32), binattn.BinarizeConfig(bias="relpos"))
    initial = {n: v.clone() for n, v in gm.state_dict().items()}
    train(gm, data.digits().subset(range(256)), recipe="binaryattention", steps=4,
          batch_size=32, lr=1e-3, progress=False)
    for name, value in gm.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(ddp_state["head.weight"], initial["head.weight"])  # it trained
