"""The QAT + self-distillation loop for a binarized model (a GraphModule from ``binattn.binarize``
or any module whose attention runs through ``BinaryAttentionSite``s / the binattn ops).

``train(model, data, cfg)``: makes the FP teacher (a frozen copy with every site in float mode),
applies the recipe's site setup (and HAD's calibration), then runs AdamW with linear warm-up +
cosine, the recipe's per-step site schedule and loss, gradient clipping, a rich progress bar
(loss, stage, metric), periodic atomic checkpoints and exact resume (same batches, same RNG).
A step reads nothing back from the device: losses stay tensors until the next log point
(``log_every`` steps, an evaluation or a checkpoint), read in one go and checked there.
Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel (``parallel``: DDP, or
FSDP2 ``fully_shard``, see ``parallel``): each rank takes its share of every batch, rank 0 logs
and writes the one checkpoint (full state, gathered under FSDP; it resumes at any number of
ranks, DDP or FSDP). HAD calibrates on the same batches on every rank and rank 0's scales are
broadcast, so the static scales are identical on all ranks; the teacher is replicated.

What it does not: binarize the model (``binattn.binarize``), load data (``data``), or choose loss
terms (``recipes``).
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from . import checkpoint as ckpt
from . import parallel
from .config import TrainConfig
from .data import TensorData, batches, steps_per_epoch
from .metrics import accuracy, embedding_agreement
from .recipes import Recipe, make_recipe
from .schedules import warmup_cosine
from .sites import Recorder, bias_parameter_names, find_sites, make_teacher, unwrap


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its teacher, the logs and final metrics."""

    model: nn.Module
    teacher: Optional[nn.Module]
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def main_output(out: Any) -> torch.Tensor:
    """The tensor a loss applies to: logits / embedding from a tensor, mapping or tuple output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        for key in ("logits", "sentence_embedding", "last_hidden_state", "pooler_output"):
            if key in out and out[key] is not None:
                return out[key]
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)) and out:
        return main_output(out[0])
    raise UserError(f"cannot find a tensor in the model's output of type {type(out).__name__}")


def resolve_task(cfg: TrainConfig, data: TensorData) -> str:
    if cfg.task != "auto":
        if cfg.task == "classification" and data.labels is None:
            raise UserError("task 'classification' needs labels (y) in the training data")
        return cfg.task
    return "classification" if data.labels is not None else "embedding"


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: decayed weights; no decay for norms/1-D params/embeddings tokens; the
    learned attention bias without decay and at ``lr · bias_lr_mult``."""
    bias_names = bias_parameter_names(model)
    groups = {"decay": [], "no_decay": [], "attn_bias": []}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        if name in bias_names:
            groups["attn_bias"].append(p)
        elif p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")):
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    out = [dict(params=groups["decay"], weight_decay=cfg.weight_decay, base_lr=cfg.lr),
           dict(params=groups["no_decay"], weight_decay=0.0, base_lr=cfg.lr),
           dict(params=groups["attn_bias"], weight_decay=0.0, base_lr=cfg.lr * cfg.bias_lr_mult)]
    return [dict(g, lr=g["base_lr"]) for g in out if g["params"]]


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int) -> torch.Tensor:
    """Main outputs for every example, in fixed-size batches (the last one padded, trimmed)."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        for inputs, _ in batches(data, batch_size, seed=0, epoch=0, shuffle=False,
                                 drop_last=False):
            outs.append(main_output(model(*inputs)).float())
    finally:
        model.train(was_training)
    return torch.cat(outs)[: len(data)]


def evaluate(model: nn.Module, data: TensorData, batch_size: int, task: str,
             teacher: Optional[nn.Module] = None) -> dict[str, float]:
    """``accuracy`` for classification; ``mean_cosine``/``spearman`` vs the teacher otherwise
    (outputs with a token dimension are mean-pooled over it first)."""
    out = predict(model, data, batch_size)
    if task == "classification":
        return {"accuracy": accuracy(out, data.labels.to(out.device))}
    if teacher is None:
        raise UserError("embedding evaluation needs the teacher")
    ref = predict(teacher, data, batch_size)
    if out.dim() > 2:  # token-level outputs (e.g. last_hidden_state): mean over the tokens
        out, ref = out.flatten(1, -2).mean(1), ref.flatten(1, -2).mean(1)
    return embedding_agreement(out, ref)


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Join the torchrun process group when launched with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _device(cfg: TrainConfig, d: _Dist) -> torch.device:
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for, but torch sees no GPU")
        if d.world_size <= 1:
            return torch.device("cuda", torch.device(cfg.device).index or 0)
        torch.cuda.set_device(d.local_rank)   # NCCL and FSDP's device mesh use the current one
        return torch.device("cuda", d.local_rank)
    return torch.device(cfg.device)


def _compile_error(err: BaseException) -> bool:
    """Whether ``err`` came from ``torch.compile`` (Dynamo or an Inductor backend)."""
    import torch._dynamo.exc as dynamo_exc

    return isinstance(err, (dynamo_exc.TorchDynamoException,
                            dynamo_exc.BackendCompilerFailed)) or \
        type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))


class Trainer:
    """One training run; :func:`train` is the one-call front end."""

    def __init__(self, model: nn.Module, data: TensorData, cfg: TrainConfig,
                 eval_data: Optional[TensorData] = None, teacher: Optional[nn.Module] = None):
        self.cfg, self.dist = cfg, _init_distributed(cfg.device)
        self.device = _device(cfg, self.dist)
        self.task = resolve_task(cfg, data)
        self.recipe: Recipe = make_recipe(cfg)
        self.data = data.to(self.device)
        self.eval_data = eval_data.to(self.device) if eval_data is not None else None
        if cfg.length_buckets and data.lengths is None:
            raise UserError("TrainConfig: length_buckets needs text data with lengths "
                            "(TensorData(..., lengths=data.text_lengths(attention_mask)))")
        self.spe = steps_per_epoch(len(data), cfg.batch_size, self.dist.world_size)
        self.total = cfg.steps or max(1, round(cfg.epochs * self.spe))
        self.model = model
        self.sites = find_sites(model)
        if self.recipe.needs_teacher(self.task) and teacher is None:
            teacher = make_teacher(model)
        self.teacher = teacher.to(self.device) if teacher is not None else None
        self.teacher_sites = find_sites(self.teacher) if self.teacher is not None else []
        self.recipe.prepare(self.sites)
        self.sharded = self.dist.world_size > 1 and cfg.parallel == "fsdp"
        # under FSDP rank 0 keeps an unsharded CPU copy to return the trained model in
        self.template = (copy.deepcopy(model).cpu() if self.sharded and self.dist.main
                         else None)
        self.model.to(self.device).train()
        self.history: list[dict] = []
        self.start_step = 0
        blob = self._load_or_calibrate()
        self.ddp = self._wrap()
        self.compiled = self._compile_forwards()
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr,
                                           fused=self._fused_adamw() or None)
        torch.manual_seed(cfg.seed)
        if blob is not None:
            self._restore(blob)

    # -- setup ------------------------------------------------------------------------------
    def _load_or_calibrate(self) -> Optional[dict]:
        """The checkpoint to resume from (every rank reads it), or None after calibrating."""
        path = self.cfg.checkpoint
        if path and self.cfg.resume and os.path.isfile(path):
            return ckpt.load(path)
        # the same calibration batches on every rank (rank 0's view of the data) ...
        calib = (inputs for inputs, _ in batches(self.data, self.cfg.batch_size,
                                                 seed=self.cfg.seed, epoch=0))
        self.recipe.calibrate(self.model, self.sites, calib)
        if self.dist.world_size > 1:   # ... and rank 0's scales, bit for bit, on all of them
            for site in self.sites:
                for scale in (site.q_scale, site.k_scale):
                    if scale is not None:
                        dist.broadcast(scale, src=0)
        return None

    def _restore(self, blob: dict) -> None:
        if self.sharded:
            parallel.load_full_state(self.ddp, self.optimizer, blob["model"],
                                     blob.get("optimizer"))
            torch.set_rng_state(blob["rng"])
            self.start_step = int(blob["step"])
        else:
            self.start_step = ckpt.restore(blob, self.model, self.optimizer)
        self.history = list(blob.get("history", []))

    def _fused_adamw(self) -> bool:
        """AdamW's fused kernel (one pass over all parameters: 16 against 117 ms for MiniLM's
        22.7 M on one CPU thread) where it applies: unsharded float parameters, CPU or CUDA."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return bool(params) and not self.sharded and all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16,
                                                             torch.bfloat16) for p in params)

    def _wrap(self) -> nn.Module:
        if self.dist.world_size <= 1:
            return self.model
        return parallel.wrap(self.model, self.cfg.parallel, self.device)

    def _compile_forwards(self) -> bool:
        """The step's forwards (``_student``, ``_teacher``): ``torch.compile`` of the student
        and teacher where ``cfg.compile`` says (None: on CUDA, for recipes whose site options
        stay fixed — not HAD's annealed temperature, which would recompile every step), else
        the modules themselves (checkpoints, evaluation and the result always use them)."""
        self._student, self._teacher = self.ddp, self.teacher
        wanted = self.cfg.compile
        if wanted is None:
            wanted = self.device.type == "cuda" and self.recipe.fixed_site_options
        if not wanted:
            return False
        self._student = torch.compile(self.ddp)
        if self.teacher is not None:
            self._teacher = torch.compile(self.teacher)
        return True

    def _uncompile(self, err: BaseException) -> None:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"binattn train: torch.compile failed ({type(err).__name__}: {first}); "
                      "training eager (TrainConfig(compile=False) skips the attempt)",
                      RuntimeWarning, stacklevel=3)
        self._student, self._teacher = self.ddp, self.teacher
        self.compiled = False

    def _epoch_batches(self, epoch: int) -> Iterator:
        return batches(self.data, self.cfg.batch_size, seed=self.cfg.seed, epoch=epoch,
                       rank=self.dist.rank, world_size=self.dist.world_size,
                       length_buckets=self.cfg.length_buckets)

    def _steps(self) -> Iterator[tuple[int, tuple, Optional[torch.Tensor]]]:
        step, end = self.start_step, min(self.total, self.cfg.stop_at or self.total)
        while step < end:
            epoch, skip = divmod(step, self.spe)
            for i, (inputs, labels) in enumerate(self._epoch_batches(epoch)):
                if i < skip:
                    continue
                yield step, inputs, labels
                step += 1
                if step >= end:
                    return

    # -- one step ---------------------------------------------------------------------------
    def _set_lr(self, step: int) -> float:
        warm = int(round(self.cfg.warmup * self.total))
        factor = warmup_cosine(step, self.total, warm, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.cfg.lr * factor

    def _autocast(self) -> torch.autocast:
        """The forward's mixed-precision context (``cfg.autocast``; disabled when None)."""
        dtype = getattr(torch, self.cfg.autocast or "float32")
        return torch.autocast(self.device.type, dtype=dtype,
                              enabled=self.cfg.autocast is not None)

    def step(self, step: int, inputs: tuple, labels: Optional[torch.Tensor]) -> dict:
        """One training step (a compiled forward that fails falls back to eager, once)."""
        if not self.compiled:
            return self._step(step, inputs, labels)
        try:
            return self._step(step, inputs, labels)
        except Exception as err:  # noqa: BLE001 - any compile failure: train eager instead
            if not _compile_error(err):
                raise
            self._uncompile(err)
            return self._step(step, inputs, labels)

    def _step(self, step: int, inputs: tuple, labels: Optional[torch.Tensor]) -> dict:
        plan = self.recipe.plan(self.sites, step, self.total)
        lr = self._set_lr(step)
        out_t, rec_t = None, None
        if self.teacher is not None:
            with torch.no_grad(), Recorder(self.teacher_sites, plan.record_probs,
                                           plan.record_outputs) as rec_t:
                with self._autocast():
                    raw_t = self._teacher(*inputs)
                out_t = main_output(raw_t).float()
        with Recorder(self.sites, plan.record_probs, plan.record_outputs) as rec_s:
            with self._autocast():
                raw_s = self._student(*inputs)
            out_s = main_output(raw_s).float()
            loss, parts = self.recipe.loss(out_s, out_t, labels, self.task, plan, rec_s, rec_t)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            parallel.clip_grad_norm(list(self.model.parameters()), self.cfg.grad_clip)
        self.optimizer.step()
        record = {"step": step + 1, "loss": loss.detach(), "lr": lr, "stage": plan.stage,
                  **parts}
        if self.task == "classification" and labels is not None:
            record["train_acc"] = (out_s.detach().argmax(-1) == labels).float().mean()
        return record

    def read_logs(self, records: list[dict]) -> None:
        """Turn the 0-dim tensors of ``records`` (steps since the last log point) into floats
        with one host read, then stop with a clear message at the first non-finite loss."""
        cells = [(r, key) for r in records for key, value in r.items()
                 if isinstance(value, torch.Tensor)]
        if cells:
            values = torch.stack([r[key].float() for r, key in cells]).tolist()
            for (r, key), value in zip(cells, values):
                r[key] = value
        for r in records:
            if not math.isfinite(r["loss"]):
                raise FloatingPointError(
                    f"loss is {r['loss']} at step {r['step']} ({r['stage']}): lower the learning "
                    f"rate, or check the data (BINATTN_DATA_CHECKS=1 names the first attention "
                    f"input holding NaN/Inf)")

    # -- loop -------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        """Rank 0 writes the checkpoint (under FSDP every rank helps gather the full state)."""
        if not self.cfg.checkpoint:
            return
        if self.sharded:
            model_state, optimizer_state = parallel.full_state(self.ddp, self.optimizer)
            if self.dist.main:
                ckpt.write(self.cfg.checkpoint, model_state, optimizer_state, step,
                           self.cfg.to_dict(), self.history)
        elif self.dist.main:
            ckpt.save(self.cfg.checkpoint, self.model, self.optimizer, step,
                      self.cfg.to_dict(), self.history)

    def evaluate(self) -> dict[str, float]:
        """Metrics on ``eval_data``: rank 0's (every rank runs the sharded model's forward)."""
        if self.eval_data is None or not (self.dist.main or self.sharded):
            return {}
        return evaluate(self.model, self.eval_data, self.cfg.batch_size, self.task, self.teacher)

    def run(self) -> TrainResult:
        start = time.perf_counter()
        with _progress(self.cfg.progress and self.dist.main) as progress:
            bar = progress.add_task(f"{self.cfg.recipe}", total=self.total,
                                    completed=self.start_step, info="")
            metric, unread = "", []
            for step, inputs, labels in self._steps():
                record = self.step(step, inputs, labels)
                self.history.append(record)
                unread.append(record)
                done = step + 1
                evaluate = bool(self.cfg.eval_every and done % self.cfg.eval_every == 0)
                save = bool(self.cfg.checkpoint_every and done % self.cfg.checkpoint_every == 0)
                if evaluate or save or done % self.cfg.log_every == 0:
                    self.read_logs(unread)   # before a checkpoint: never save a NaN model
                    unread = []
                if evaluate and (self.dist.main or self.sharded):
                    scores = self.evaluate()
                    record.update({f"eval_{k}": v for k, v in scores.items()})
                    metric = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
                if save:
                    self.save(done)
                shown = {} if unread else {"info": _info(record, metric)}
                progress.update(bar, completed=done, **shown)
            self.read_logs(unread)
        done = min(self.total, self.cfg.stop_at or self.total)
        self.save(done)
        metrics = self.evaluate()
        if not self.dist.main:
            metrics = {}
        return TrainResult(self.trained_model(), self.teacher, self.history, metrics,
                           done, time.perf_counter() - start)

    def trained_model(self) -> nn.Module:
        """The model trained in place; under FSDP (every rank calls it), rank 0 gets an
        unsharded CPU copy with the gathered weights and the sites' final options."""
        if not self.sharded:
            return self.model
        state, _ = parallel.full_state(self.ddp, None)
        if self.template is None:
            return self.model
        self.template.load_state_dict(state)
        for mine, trained in zip(find_sites(self.template), self.sites):
            mine.options, mine.mode = trained.options, trained.mode
        return self.template


def _info(record: dict, metric: str) -> str:
    acc = f"  acc {record['train_acc']:.3f}" if "train_acc" in record else ""
    return f"loss {record['loss']:.4f}{acc}  [{record['stage']}]  {metric}"


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NullProgress()
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def train(model: nn.Module, data: TensorData, cfg: Optional[TrainConfig] = None, *,
          eval_data: Optional[TensorData] = None, teacher: Optional[nn.Module] = None,
          **overrides: Any) -> TrainResult:
    """Train a binarized ``model`` on ``data`` with ``cfg.recipe``; returns a :class:`TrainResult`.

    ``overrides`` replace fields of ``cfg`` (or of the default config), e.g.
    ``train(gm, data, recipe="had", epochs=30)``. ``teacher`` defaults to a frozen float-mode
    copy of ``model`` taken before training. The model is trained in place.
    """
    cfg = replace(cfg, **overrides) if cfg is not None else TrainConfig(**overrides)
    if not math.isfinite(cfg.lr):
        raise UserError("lr must be finite")
    return Trainer(model, data, cfg, eval_data=eval_data, teacher=teacher).run()
