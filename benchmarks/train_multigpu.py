"""Multi-GPU training benchmark: ``binattn train``'s loop on 1, 2 and 4 GPUs, DDP and FSDP.

Run on a machine with N GPUs (it reads ``nvidia-smi -L`` and uses 1, 2, 4 ≤ N)::

    python benchmarks/train_multigpu.py --out benchmarks/results/multigpu

Each configuration is one ``torchrun --standalone --nproc-per-node G`` launch of this file
(``NCCL_NVLS_ENABLE=0``: NCCL's NVLink multicast off) that trains a binarized ViT-B/16 (timm
``vit_base_patch16_224``, random init; without timm a ``binattn.models.demo_vit`` sized like
ViT-B: 224², patch 16, dim 768, depth 12, heads 12, MLP 4×, and the table says so) with the
``binaryattention`` recipe (learned relpos bias, hard-label KD against its float copy) on the
digits upsampled to 224² RGB, ``--batch`` images per GPU, for ``--steps`` steps. One GPU runs
once (no wrapper); 2 and 4 GPUs run with ``parallel="ddp"`` and ``"fsdp"``.

Samples/s counts the steps after ``--warmup-steps`` (a device sync at both ends, none
between: the trainer reads the loss every ``log_every`` steps only). It prints a table (GPUs,
mode, samples/s, samples/s per GPU, scaling efficiency = samples/s ÷ (GPUs × 1-GPU samples/s),
final loss = mean of the last 10 steps on rank 0), checks that the learned bias tables are
bit-identical on every rank after the run (each rank saves its gathered tables), and writes
``multigpu.json`` and ``multigpu.md`` into ``--out``. Exit status 1 when a table differs.

``--cpu`` runs the same plumbing on CPU ranks with gloo and the ViT cut down (1 and 2 ranks), the
check tests/test_train_multigpu.py makes where no GPU is lent. What it does not: tune batch
sizes, compile the model, or train to accuracy (docs/training.md has the accuracy runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


# -- one rank ---------------------------------------------------------------------------------
def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, int]:
    """(float model, its name, image side): ViT-B/16 at 224², or with ``--cpu`` the same
    architecture cut down (32², patch 8, 2 blocks; ViT-Ti widths)."""
    side, patch, timm_kw = (32, 8, dict(depth=2)) if args.cpu else (224, 16, {})
    name = "vit_tiny_patch16_224" if args.cpu else "vit_base_patch16_224"
    try:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=side,
                                  patch_size=patch, **timm_kw)
        return model, f"timm {name} ({side}², patch {patch}, random init)", side
    except ImportError:
        from binattn.models import demo_vit

        dims = dict(dim=192, depth=2, heads=3) if args.cpu else dict(dim=768, depth=12,
                                                                     heads=12)
        model = demo_vit(image_size=side, patch_size=patch, mlp_ratio=4.0, **dims)
        return model, f"binattn demo_vit sized like {name} (timm missing)", side


def digits_at(side: int):
    """The digits as RGB images of ``side``² (nearest upsampling), labels 0-9."""
    from binattn.train import data

    digits = data.digits()
    images = torch.nn.functional.interpolate(digits.inputs[0], size=(side, side))
    return data.TensorData((images.expand(-1, 3, -1, -1).contiguous(),), digits.labels)


def worker(args: argparse.Namespace) -> None:
    import warnings

    import torch.distributed as dist

    import binattn
    from binattn.train import TrainConfig
    from binattn.train.parallel import full_tensors
    from binattn.train.sites import bias_parameter_names, find_sites
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, name, side = build_model(args)
    device = "cpu" if args.cpu else f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if not args.cpu:
        torch.cuda.set_device(device)
    example = torch.randn(args.batch, 3, side, side)
    gm = binattn.binarize(model.eval(), (example,), binattn.BinarizeConfig(bias="relpos"))
    cfg = TrainConfig(recipe="binaryattention", steps=args.steps, batch_size=args.batch,
                      lr=1e-4, device="cpu" if args.cpu else "cuda", progress=False,
                      parallel=args.mode, log_every=10)
    trainer = timed_trainer()(gm, digits_at(side), cfg, warm=args.warmup_steps)
    result = trainer.run()
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    tables = full_tensors(trainer.model, bias_parameter_names(gm))
    scales = [(s.q_scale, s.k_scale) for s in find_sites(gm) if s.q_scale is not None]
    out = Path(args.run_dir)
    torch.save({"tables": tables, "scales": scales}, out / f"state.{rank}.pt")
    if rank == 0:
        timed = args.steps - args.warmup_steps
        losses = [r["loss"] for r in result.history[-10:]]
        (out / "result.json").write_text(json.dumps(dict(
            model=name, gpus=world, mode=args.mode if world > 1 else "single",
            samples_per_s=timed * args.batch * world / (trainer.t1 - trainer.t0),
            final_loss=sum(losses) / len(losses),
            device=torch.cuda.get_device_name() if not args.cpu else "cpu")))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _synced_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_trainer():
    """A Trainer class that notes the time (after a device sync) when step ``warm`` starts
    (``t0``) and when the last step ends (``t1``)."""
    from binattn.train.trainer import Trainer

    class TimedTrainer(Trainer):
        def __init__(self, *a, warm: int, **kw):
            super().__init__(*a, **kw)
            self.warm, self.t0, self.t1 = warm, 0.0, 0.0

        def step(self, step, inputs, labels):
            if step == self.warm:
                self.t0 = _synced_time(self.device)
            record = super().step(step, inputs, labels)
            if step + 1 == self.total:
                self.t1 = _synced_time(self.device)
            return record

    return TimedTrainer


# -- the driver ---------------------------------------------------------------------------------
def gpu_count() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def plan(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(ranks, mode) per launch: 1 rank once, then DDP and FSDP at each larger count."""
    available = 2 if args.cpu else gpu_count()
    if available < 1:
        raise SystemExit("no GPU found by nvidia-smi -L (use --cpu for the gloo check)")
    counts = [n for n in (1, 2, 4) if n <= available]
    return [(1, "ddp")] + [(n, mode) for n in counts[1:] for mode in ("ddp", "fsdp")]


def launch(args: argparse.Namespace, ranks: int, mode: str) -> dict:
    run_dir = Path(args.out) / f"{ranks}x_{mode}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", "1" if args.cpu else "4"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks), str(HERE), "--worker", "--mode", mode,
               "--run-dir", str(run_dir), "--steps", str(args.steps), "--batch", str(args.batch),
               "--warmup-steps", str(args.warmup_steps)] + (["--cpu"] if args.cpu else [])
    print("$ NCCL_NVLS_ENABLE=0 python " + " ".join(command[1:]), flush=True)
    subprocess.run(command, env=env, check=True, timeout=args.timeout)
    result = json.loads((run_dir / "result.json").read_text())
    result["tables_identical"] = tables_identical(run_dir, ranks)
    return result


def tables_identical(run_dir: Path, ranks: int) -> bool:
    """Whether every rank's bias tables and static scales equal rank 0's, bit for bit."""
    states = [torch.load(run_dir / f"state.{r}.pt", weights_only=True) for r in range(ranks)]
    first = states[0]
    same = bool(first["tables"])
    for other in states[1:]:
        same &= all(torch.equal(v, other["tables"][k]) for k, v in first["tables"].items())
        same &= all(torch.equal(a, b) for pair, other_pair in zip(first["scales"],
                                                                   other["scales"])
                    for a, b in zip(pair, other_pair))
    return same


def table(rows: list[dict]) -> str:
    base = next(r["samples_per_s"] for r in rows if r["gpus"] == 1)
    lines = ["| GPUs | mode | samples/s | samples/s per GPU | scaling efficiency | final loss | "
             "bias tables identical |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = r["samples_per_s"] / (r["gpus"] * base)
        lines.append(f"| {r['gpus']} | {r['mode']} | {r['samples_per_s']:.1f} | "
                     f"{r['samples_per_s'] / r['gpus']:.1f} | {eff:.0%} | "
                     f"{r['final_loss']:.4f} | {'yes' if r['tables_identical'] else 'NO'} |")
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> int:
    rows = [launch(args, ranks, mode) for ranks, mode in plan(args)]
    text = (f"{rows[0]['model']}, {args.batch} images per GPU, {args.steps} steps "
            f"({args.warmup_steps} untimed), {rows[0]['device']}\n\n{table(rows)}\n")
    print("\n" + text)
    out = Path(args.out)
    (out / "multigpu.json").write_text(json.dumps(rows, indent=1))
    (out / "multigpu.md").write_text(text)
    return 0 if all(r["tables_identical"] for r in rows) else 1


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/multigpu")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32, help="images per GPU (per rank)")
    p.add_argument("--cpu", action="store_true", help="gloo on CPU ranks, a cut-down ViT")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per launch")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup_steps >= args.steps:
        p.error("--warmup-steps must be below --steps")
    return args


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:
        worker(arguments)
    else:
        sys.exit(drive(arguments))
