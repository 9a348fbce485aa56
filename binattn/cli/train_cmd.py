"""``binattn train MODEL --recipe had|binaryattention --data ... -o OUT.pt2``: QAT + distillation.

Loads MODEL (``.pt2``, ``torch.save``'d module, or Hugging Face model directory), binarizes its
attention (``binattn.binarize``), trains it with the chosen recipe against its own full-precision
copy, and writes the trained model as a ``.pt2`` (the ops resolve after ``import binattn``) plus
a training checkpoint next to it (``OUT.ckpt``; ``--resume`` continues from it). Data: a built-in
offline set (``digits``, ``cluttered-digits``, ``stdlib-text`` or ``english-mix`` for text
models), a ``.npz``/``.pt`` file holding ``x`` (and labels ``y`` for classification) or a
``.txt`` file of sentences (one per line, tokenized with the model directory's tokenizer).
With ``english-mix`` it also reports cosine / Spearman / min cosine per held-out register
(texts of sources never trained on, ``train.corpus``).

What it does not: hyper-parameter search, or data pipelines beyond in-memory tensors.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import click
import torch

from ..errors import UserError

BUILTIN_DATA = ("digits", "cluttered-digits", "stdlib-text", "english-mix")


def _tokenizer(model_path: Path):
    if not model_path.is_dir():
        raise UserError("text data needs a Hugging Face model directory with a tokenizer as MODEL")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot load a tokenizer from {model_path}: {exc}") from None
    return tok


def _text_data(sentences: list[str], model_path: Path, max_len: int):
    from ..train.data import TensorData, text_lengths

    enc = _tokenizer(model_path)(sentences, padding="max_length", truncation=True,
                                 max_length=max_len, return_tensors="pt")
    return TensorData((enc["input_ids"], enc["attention_mask"]),
                      lengths=text_lengths(enc["attention_mask"]))


def load_data(spec: str, model_path: Path, max_len: int):
    """The TensorData that ``--data`` names."""
    from ..train import data

    if spec == "digits":
        return data.digits()
    if spec == "cluttered-digits":
        return data.cluttered_digits()
    if spec == "stdlib-text":
        return _text_data(data.stdlib_sentences(), model_path, max_len)
    if spec == "english-mix":
        from ..train import corpus

        return _text_data(corpus.english_mix(), model_path, max_len)
    path = Path(spec)
    if path.suffix == ".txt":
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{path} has no sentences")
        return _text_data(lines, model_path, max_len)
    if path.suffix not in (".npz", ".pt", ".pth"):
        raise UserError(f"--data must be one of {BUILTIN_DATA} or a .npz/.pt/.txt file, "
                        f"got {spec!r}")
    return data.load_tensor_data(path)


def register_report(model, teacher, model_path: Path, max_len: int,
                    batch_size: int) -> dict[str, dict[str, float]]:
    """Per held-out register of ``english-mix``: student vs teacher agreement of the outputs
    (mean-pooled over real tokens when token-level; texts cut or padded to ``max_len`` tokens,
    the length the graph was captured with)."""
    from ..train import corpus, predict
    from ..train.metrics import register_agreement

    device = next(model.parameters()).device
    out = {}
    for register, texts in corpus.held_out_registers(128).items():
        data = _text_data(texts, model_path, max_len).to(device)
        mask = data.inputs[1]
        out[register] = register_agreement(_pool(predict(model, data, batch_size), mask),
                                           _pool(predict(teacher, data, batch_size), mask))
    return out


def _pool(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level outputs ([n, tokens, d]) mean-pooled over the real tokens; else as given."""
    if out.dim() != 3:
        return out
    weight = mask.to(out.dtype).unsqueeze(-1)
    return (out * weight).sum(1) / weight.sum(1).clamp_min(1e-9)


def _dynamic_length(data, bias: Optional[str], length_buckets: int) -> Optional[tuple]:
    """The capture's dynamic dims for ``--length-buckets``: batch and sequence of every input
    with one (None without it: the capture's own default)."""
    if not length_buckets:
        return None
    if data.lengths is None:
        raise UserError("--length-buckets needs text data (a padding mask), not inputs of "
                        f"shapes {[tuple(t.shape) for t in data.inputs]}")
    if bias in ("relpos", "dense"):
        raise UserError(f"--length-buckets needs --bias none, head or relpos_1d: a {bias} "
                        "bias fixes the sequence length")
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=2, max=data.inputs[0].shape[1])
    return tuple({0: batch, 1: seq} if t.dim() >= 2 else {0: batch} for t in data.inputs)


def split(data, eval_fraction: float, seed: int):
    """(train, eval) with a seeded random split; eval is None when the fraction is 0."""
    if eval_fraction <= 0:
        return data, None
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * eval_fraction))
    return data.subset(order[cut:]), data.subset(order[:cut])


def write_pt2(model: torch.nn.Module, example: tuple, out: Path) -> None:
    """Export the trained model to ``out`` atomically (temporary file, then rename)."""
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, example,
                                      dynamic_shapes=tuple({0: batch} for _ in example))
    except Exception:  # noqa: BLE001 - some graphs pin the batch size: export it static
        program = torch.export.export(model, example)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.pt2")
    try:
        torch.export.save(program, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


@click.command("train")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--recipe", type=click.Choice(["binaryattention", "had"]), default="binaryattention",
              show_default=True, help="BinaryAttention (mean|x| scales, bias, hard-label KD) or "
              "HAD (static scales, tanh→sign stages, attention-map + output KL, top-N).")
@click.option("--data", "data_spec", required=True,
              help=f"{', '.join(BUILTIN_DATA)}, or a .npz/.pt (x[, y]) or .txt file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Trained model (.pt2); the checkpoint goes to OUTPUT.ckpt.")
@click.option("--epochs", type=float, default=None, help="Run length in epochs.  [default: 60]")
@click.option("--steps", type=int, default=None, help="Train this many steps (overrides epochs). "
              " [default: text 4500, else by epochs]")
@click.option("--batch-size", type=int, default=None, help="  [default: text 16, else 64]")
@click.option("--lr", type=float, default=None, help="AdamW learning rate.  [default: text "
              "2e-4, else 3e-4]")
@click.option("--bias", type=click.Choice(["relpos", "relpos_1d", "dense", "head", "none",
                                          "auto"]),
              default=None, help="Learned attention bias (relpos: a table over the image's token "
              "grid; relpos_1d: one over 1-D offsets within ±32 tokens, any text length; auto: "
              "relpos for binaryattention, none for had).  [default: text relpos_1d, else auto]")
@click.option("--distill", type=click.Choice(["hard", "soft", "none"]), default="hard",
              show_default=True, help="Output distillation for classification.")
@click.option("--top-n", type=int, default=None, help="Top-N keys per query (HAD default 30; "
              "0 = off).")
@click.option("--pv-bits", type=click.Choice(["8"]), default=None, help="8-bit P and V.")
@click.option("--ste-clip", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Straight-through window: sign(x)'s gradient passes where |x| <= this "
              "(BinaryAttention 1, HAD 2).  [default: the recipe's]")
@click.option("--attn-weight", type=float, default=None,
              help="Attention-map KL weight.  [default: text 1; else HAD 1, BinaryAttention 0]")
@click.option("--calib-batches", type=int, default=100, show_default=True,
              help="HAD: batches for the static scales.")
@click.option("--eval-fraction", type=float, default=0.2, show_default=True,
              help="Held-out share of the data for the final metric (0 = none).")
@click.option("--max-len", type=int, default=None,
              help="Token length for text data.  [default: 128]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="Under torchrun: DDP (replicated model) or FSDP2 (fully_shard: parameters, "
              "gradients and optimizer state sharded, for models too large to replicate). "
              "Checkpoints resume under either, at any number of ranks.")
@click.option("--autocast", type=click.Choice(["bfloat16", "float16", "off"]), default=None,
              help="Mixed precision: forwards under torch.autocast in this dtype (weights, "
              "optimizer and losses stay float32). bfloat16 halves the linear layers' time on "
              "CPUs with AVX-512 BF16/AMX and on GPUs.  [default: text bfloat16 where the "
              "device runs it fast, else off]")
@click.option("--length-buckets", type=click.IntRange(min=0), default=None,
              help="Text: batches of similar-length texts, each cut to its longest (a window "
              "of this many steps; 0 = off). The model is captured with a dynamic sequence "
              "length, so the bias must be none, head or relpos_1d.  [default: text 50, else 0]")
@click.option("--hidden-weight", type=float, default=None,
              help="Per-layer attention-output MSE against the teacher (normalised by its "
              "variance).  [default: text 1, else 0]")
@click.option("--compile/--no-compile", "compile_step", default=None,
              help="Run the forwards through torch.compile.  [default: on CUDA, not on CPU "
              "and not for HAD, whose annealed temperature would recompile every step]")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUTPUT.ckpt when it exists.")
@click.option("--trust-pickle", is_flag=True, help="Allow full unpickling of MODEL (only for "
              "files you trust).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model: Path, recipe: str, data_spec: str, output: Path, epochs: Optional[float],
            steps: Optional[int], batch_size: Optional[int], lr: Optional[float],
            bias: Optional[str], distill: str, top_n: Optional[int], pv_bits: Optional[str],
            ste_clip: Optional[float], attn_weight: Optional[float], calib_batches: int,
            eval_fraction: float, max_len: Optional[int], seed: int, device: str, parallel: str,
            autocast: Optional[str], length_buckets: Optional[int],
            hidden_weight: Optional[float], compile_step: Optional[bool], resume: bool,
            trust_pickle: bool, quiet: bool) -> None:
    """Binarize MODEL's attention and train it back to full-precision quality.

    Options not given come from the preset of the data: text (english-mix, stdlib-text, .txt:
    the MiniLM recipe of docs/training.md) or tensors (the ViT recipe); the first line printed
    names the values used.

    Example: binattn train vit.pt --recipe binaryattention --data digits --epochs 60 -o vit_b.pt2

    On N GPUs: torchrun --nproc-per-node N -m binattn.cli train ... --device cuda --parallel fsdp
    """
    from rich.console import Console

    from ..binarize_pass import BinarizeConfig, binarize
    from ..model_io import load_model
    from ..train import TrainConfig, find_sites, presets, train

    kind, opts = presets.resolve(data_spec, device, dict(
        epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, bias=bias, max_len=max_len,
        attn_weight=attn_weight, hidden_weight=hidden_weight, length_buckets=length_buckets,
        autocast=autocast))
    console = Console(stderr=True)
    console.print(presets.describe(kind, opts))
    epochs, steps, batch_size, lr = opts["epochs"], opts["steps"], opts["batch_size"], opts["lr"]
    bias, max_len, attn_weight = opts["bias"], opts["max_len"], opts["attn_weight"]
    hidden_weight, length_buckets = opts["hidden_weight"], opts["length_buckets"]
    autocast = None if opts["autocast"] == "off" else opts["autocast"]
    if output.suffix != ".pt2":
        raise UserError(f"--output must end in .pt2, got {output}")
    if not 0 <= eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    net, _ = load_model(model, trust_pickle=trust_pickle)
    dataset = load_data(data_spec, model, max_len)
    train_set, eval_set = split(dataset, eval_fraction, seed)
    auto_bias = "relpos" if recipe == "binaryattention" and not length_buckets else None
    bias_kind = {"auto": auto_bias, "none": None}.get(bias, bias)
    dynamic = _dynamic_length(dataset, bias_kind, length_buckets)
    example = tuple(t[:batch_size] for t in train_set.inputs)
    if isinstance(net, torch.nn.Module):
        net.eval()
    gm = binarize(net, example, BinarizeConfig(bias=bias_kind), dynamic_shapes=dynamic)
    sites = find_sites(gm)
    if not sites:
        raise UserError(f"{model}: the pass found no attention to binarize "
                        f"(see `binattn inspect {model}`)")
    console.print(f"binarized {len(sites)} attention site(s); training with {recipe}")
    cfg = TrainConfig(recipe=recipe, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                      weight_decay=opts["weight_decay"], bias_lr_mult=opts["bias_lr_mult"],
                      distill=distill, top_n=top_n, pv_bits=int(pv_bits) if pv_bits else None,
                      ste_clip=ste_clip,
                      attn_weight=attn_weight, calib_batches=calib_batches, seed=seed,
                      device=device, checkpoint=str(output) + ".ckpt", resume=resume,
                      progress=not quiet, parallel=parallel, autocast=autocast,
                      length_buckets=length_buckets, hidden_weight=hidden_weight,
                      compile=compile_step)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = train(gm, train_set, cfg, eval_data=eval_set)
    dist = torch.distributed
    if not dist.is_initialized() or dist.get_rank() == 0:   # under torchrun, rank 0 writes
        if data_spec == "english-mix" and result.teacher is not None:
            report = register_report(result.model, result.teacher, model, max_len, batch_size)
            for register, m in report.items():
                console.print(f"held-out {register:<12} cos {m['mean_cosine']:.4f}  spearman "
                              f"{m['spearman']:.4f}  min {m['min_cosine']:.4f}  (n {m['n']})")
        write_pt2(result.model.cpu(), example, output)
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        console.print(f"trained {result.steps} steps in {result.seconds:.0f} s  {metrics}")
        console.print(f"wrote {output} and {cfg.checkpoint}")
    if dist.is_initialized():   # every rank done before any tears the process group down
        dist.barrier()
        dist.destroy_process_group()
        _exit_without_teardown()


def _exit_without_teardown() -> None:
    """End a torchrun rank once its work is written: gloo's worker threads can abort the
    interpreter's teardown ("terminate called without an active exception", SIGABRT; PyTorch
    issue 179291), which would turn a finished run into a failed one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
