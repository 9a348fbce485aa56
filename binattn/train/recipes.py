"""Training recipes: how the sites are set up, how they change per step, and the loss.

  - ``binaryattention`` (BinaryAttention, CVPR 2026): per-(b, h) mean|x| scales (gradient flows
    through them), sign with STE clipped at 1, the learned bias the pass added, optional 8-bit
    P/V, self-distillation from the FP teacher with hard-label KD
    ``0.5·CE(labels) + 0.5·CE(argmax teacher)`` (soft KL optional), no attention-map loss unless
    ``attn_weight`` is set.
  - ``had`` (Hamming Attention Distillation): static per-layer scales calibrated as the std of q
    and k over N batches, the staged binarizer of ``schedules.had_stage`` (scaled tanh 5→1,
    tanh 1→0.05, sign with STE clipped at 2, final stage without the attention-map loss),
    attention-map KL + output KL against the teacher, top-N (default 30).
  - ``fp``: plain supervised training (CE on labels), for full-precision baselines.

For unlabeled data (task ``embedding``) the output term is ``1 − cos + MSE`` between student and
teacher outputs instead of a KD on logits.

What it does not: loop, batch or optimize (``trainer``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import TrainConfig
from .schedules import had_stage
from .sites import Recorder, set_options, static_scale_stats

RECIPE_DEFAULTS = {
    "binaryattention": dict(scale_mode="mean_abs", top_n=0, ste_clip=1.0, attn_weight=0.0),
    "had": dict(scale_mode="static", top_n=30, ste_clip=2.0, attn_weight=1.0),
    "fp": dict(scale_mode=None, top_n=0, ste_clip=1.0, attn_weight=0.0),
}


@dataclass
class StepPlan:
    """What one step needs: recorded probabilities / outputs, and a label for the logs."""

    record_probs: bool
    record_outputs: bool
    stage: str


class Recipe:
    """Base recipe; subclasses set up sites and choose loss terms."""

    name = "base"
    #: whether the sites' options stay fixed over the run (then a compiled forward compiles
    #: once; ``TrainConfig.compile=None`` compiles on CUDA only then)
    fixed_site_options = True

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        defaults = RECIPE_DEFAULTS[cfg.recipe]
        self.site_options = cfg.site_options(defaults)   # the op options the sites train with
        self.attn_weight = defaults["attn_weight"] if cfg.attn_weight is None else cfg.attn_weight

    def needs_teacher(self, task: str) -> bool:
        return (task == "embedding" or self.cfg.distill != "none" or self.attn_weight > 0
                or self.cfg.hidden_weight > 0)

    def prepare(self, sites: list) -> None:
        """Set the site options this recipe trains with (before calibration / resume)."""
        set_options(sites, mode="binary", **self.site_options)

    def calibrate(self, model: nn.Module, sites: list, batches) -> None:
        """Fit data-dependent site state (HAD's static scales); nothing by default."""

    def plan(self, sites: list, step: int, total: int) -> StepPlan:
        """Apply per-step site options and say what the loss needs recorded."""
        return StepPlan(self.attn_weight > 0 and bool(sites), self.cfg.hidden_weight > 0,
                        "sign")

    def output_loss(self, out_s: torch.Tensor, out_t: Optional[torch.Tensor],
                    labels: Optional[torch.Tensor], task: str) -> torch.Tensor:
        cfg = self.cfg
        if task == "embedding":
            return losses.embedding_loss(out_s, out_t, cfg.embedding_mse_weight)
        if out_t is None or cfg.distill == "none":
            return F.cross_entropy(out_s, labels)
        if cfg.distill == "soft":
            return losses.soft_kd(out_s, out_t, labels, cfg.kd_temperature, cfg.label_weight)
        return losses.hard_kd(out_s, out_t, labels, cfg.label_weight)

    def loss(self, out_s: torch.Tensor, out_t: Optional[torch.Tensor],
             labels: Optional[torch.Tensor], task: str, plan: StepPlan,
             rec_s: Optional[Recorder], rec_t: Optional[Recorder]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts (detached 0-dim tensors for the logs: the trainer reads
        them at its log points, so a step makes no host read)."""
        total = self.cfg.output_weight * self.output_loss(out_s, out_t, labels, task)
        parts = {"output": total.detach()}
        if plan.record_probs and rec_s is not None and rec_s.probs:
            attn = losses.attention_kl(rec_s.probs, rec_t.probs)
            total = total + self.attn_weight * attn
            parts["attn_kl"] = attn.detach()
        if plan.record_outputs and rec_s is not None and rec_s.outputs:
            hidden = sum(F.mse_loss(s.float(), t.detach().float())
                         / t.detach().float().var().clamp_min(1e-8)
                         for s, t in zip(rec_s.outputs, rec_t.outputs)) / len(rec_s.outputs)
            total = total + self.cfg.hidden_weight * hidden
            parts["hidden"] = hidden.detach()
        return total, parts


class BinaryAttentionRecipe(Recipe):
    name = "binaryattention"


class FPRecipe(Recipe):
    name = "fp"

    def needs_teacher(self, task: str) -> bool:
        return task == "embedding"

    def prepare(self, sites: list) -> None:
        """FP training leaves the sites (if any) as they are."""


class HADRecipe(Recipe):
    name = "had"
    # the binarizer's temperature anneals every step: a compiled forward would recompile
    fixed_site_options = False

    def prepare(self, sites: list) -> None:
        super().prepare(sites)
        for site in sites:  # placeholders so a checkpoint's calibrated scales load into them
            if site.q_scale is None:
                site.q_scale = torch.ones(())
                site.k_scale = torch.ones(())

    def calibrate(self, model: nn.Module, sites: list, batches) -> None:
        """σ_q, σ_k = std of q and k per site, averaged over ``calib_batches`` batches."""
        for site in sites:
            site.mode = "float"  # calibrate on the full-precision activations
        try:
            stats = static_scale_stats(model, sites, batches, self.cfg.calib_batches)
        finally:
            for site in sites:
                site.mode = "binary"
        for site, (sq, sk) in zip(sites, stats):
            device = site.q_scale.device if site.q_scale is not None else "cpu"
            site.q_scale = torch.tensor(max(sq, 1e-6), device=device)
            site.k_scale = torch.tensor(max(sk, 1e-6), device=device)

    def plan(self, sites: list, step: int, total: int) -> StepPlan:
        stage = had_stage(step, total, self.cfg.had_fractions,
                          ste_clip=self.site_options["ste_clip"])
        set_options(sites, binarizer=stage.binarizer, temperature=stage.temperature,
                    ste_clip=stage.ste_clip)
        return StepPlan(stage.attention_loss and self.attn_weight > 0 and bool(sites),
                        self.cfg.hidden_weight > 0,
                        f"{stage.stage}:{stage.binarizer}@{stage.temperature:.3g}")

    def output_loss(self, out_s, out_t, labels, task):
        if task == "embedding" or out_t is None:
            return super().output_loss(out_s, out_t, labels, task)
        return losses.soft_kd(out_s, out_t, labels, self.cfg.kd_temperature,
                              self.cfg.label_weight if labels is not None else 0.0)


RECIPES = {"binaryattention": BinaryAttentionRecipe, "had": HADRecipe, "fp": FPRecipe}


def make_recipe(cfg: TrainConfig) -> Recipe:
    """The recipe object ``cfg.recipe`` names."""
    return RECIPES[cfg.recipe](cfg)
