"""Training-step benchmark (GPU): a binarized timm ViT's step against the original's, eager and
compiled, as ``binattn train`` runs it.

Run on a GPU: ``python benchmarks/train_step.py [--out DIR] [--batch 32] [--model NAME]``.
Side by side in one run (float32 weights, TF32 matmuls, random images and labels):

- ``model step``: forward, cross-entropy, backward, AdamW step of the original model and of
  ``binattn.binarize(model)``'s GraphModule in train mode — eager, and with the model wrapped in
  ``torch.compile`` (default Inductor);
- ``trainer step``: ``binattn.train``'s whole step (teacher forward, the recipe's loss, its
  logging) through ``Trainer.step``, eager and with student and teacher compiled — the
  measurement behind whether ``binattn train`` compiles on CUDA;
- columns: ms per step (``binattn.bench.e2e.time_ms``: bench_ms's median), host syncs per step
  (``aten::_local_scalar_dense`` and ``cuda*Synchronize`` in the profiler, less an empty call's),
  copies per step (``aten::clone/copy_/contiguous/_to_copy`` of a tensor at least as large as
  one layer's q), peak GPU memory.

Prints the table (device named) and writes ``train_step.json`` into ``--out``. What it does not:
check convergence (tests and docs/training.md do) or time inference (``benchmarks/e2e.py``).
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from binattn.bench.e2e import profile_counts, time_ms

CUDA = torch.device("cuda")


def model_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One plain training step (CE loss, AdamW) of ``model``; the loss stays on the device."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = nn.functional.cross_entropy(out.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def trainer_step(gm: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                 compiled: bool) -> Callable[[], None]:
    """``Trainer.step`` of binattn's default recipe on one fixed batch."""
    from binattn.train.config import TrainConfig
    from binattn.train.data import TensorData
    from binattn.train.trainer import Trainer

    cfg = TrainConfig(steps=1000, batch_size=x.shape[0], device="cuda", progress=False,
                      compile=compiled)
    trainer = Trainer(gm, TensorData((x,), labels), cfg)
    counter = iter(range(10 ** 9))
    return lambda: trainer.step(next(counter), (x,), labels)


def paths(name: str, batch: int) -> tuple[dict[str, Callable[[], None]], int]:
    import timm

    import binattn

    torch.manual_seed(0)
    make = lambda: timm.create_model(name, pretrained=False).cuda().train()  # noqa: E731
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    original = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = binattn.binarize(make(), (x,)).train()
    big = batch * original.patch_embed.num_patches * original.embed_dim // 3
    steps = {
        "original, model step, eager": model_step(original, x, labels),
        "original, model step, compiled": model_step(torch.compile(make()), x, labels),
        "binarized, model step, eager": model_step(gm, x, labels),
        "binarized, model step, compiled": model_step(
            torch.compile(binattn.binarize(make(), (x,)).train()), x, labels),
        "binarized, trainer step, eager": trainer_step(
            binattn.binarize(make(), (x,)), x, labels, compiled=False),
        "binarized, trainer step, compiled": trainer_step(
            binattn.binarize(make(), (x,)), x, labels, compiled=True)}
    return steps, big


def run(name: str, batch: int, budget_ms: float) -> list[dict]:
    rows = []
    todo, big = paths(name, batch)
    for path, step in todo.items():
        torch.cuda.reset_peak_memory_stats()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                step()   # warm-up: compile, kernels load
                ms = time_ms(step, CUDA, budget_ms)
                counts = profile_counts(step, CUDA, big, calls=1)
        except Exception as err:  # a failing path is a result: print it, go on
            rows.append({"path": path, "error": f"{type(err).__name__}: {err}"[:300]})
            print(f"  {path:36s} FAILED {rows[-1]['error']}", flush=True)
            continue
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        rows.append({"model": name, "batch": batch, "path": path, "ms": ms,
                     "peak_gib": peak, **counts})
        print(f"  {path:36s} {ms:8.2f} ms  syncs {counts['host_syncs']:3d}  copies "
              f"{counts['copies']:3d}  peak {peak:.1f} GiB", flush=True)
    return rows


def table(rows: list[dict], device: str) -> str:
    lines = [f"device: {device}", "", "| path | ms | host syncs | copies | peak GiB |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | failed: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| {r['path']} | {r['ms']:.2f} | {r['host_syncs']} | {r['copies']} | "
                     f"{r['peak_gib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--model", default="vit_base_patch16_224", help="a timm model name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget-ms", type=float, default=2000,
                        help="timing budget per path (bench_ms's repetitions)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/train_step.py needs a CUDA GPU")
    if args.batch < 1 or args.budget_ms <= 0:
        raise SystemExit("--batch must be ≥ 1 and --budget-ms > 0")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from binattn import backend
    backend.register()
    device = torch.cuda.get_device_name()
    rows = run(args.model, args.batch, args.budget_ms)
    text = table(rows, device)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps({"device": device, "rows": rows},
                                                         indent=1))


if __name__ == "__main__":
    main()
