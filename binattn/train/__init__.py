"""binattn.train: QAT + self-distillation for binarized attention (BinaryAttention and HAD recipes).

One call::

    gm = binattn.binarize(model, example_inputs, binattn.BinarizeConfig(bias="relpos"))
    result = binattn.train.train(gm, binattn.train.data.digits(), recipe="binaryattention",
                                 epochs=60, checkpoint="run.ckpt")

The teacher is a frozen copy of the same GraphModule with every site in full-precision mode (the
model before binarization). Works for classification (labels) and for unlabeled data (pure
distillation on outputs/embeddings); data-parallel under ``torchrun``. See ``docs/training.md``.
"""
from __future__ import annotations

from . import checkpoint, data, losses, metrics, schedules
from .config import TrainConfig
from .recipes import RECIPES, BinaryAttentionRecipe, HADRecipe, make_recipe
from .schedules import HADStage, had_stage, warmup_cosine
from .sites import Recorder, find_sites, make_teacher
from .trainer import TrainResult, Trainer, evaluate, main_output, predict, train

__all__ = ["train", "Trainer", "TrainConfig", "TrainResult", "evaluate", "predict", "main_output",
           "RECIPES", "BinaryAttentionRecipe", "HADRecipe", "make_recipe", "had_stage",
           "HADStage", "warmup_cosine", "find_sites", "make_teacher", "Recorder", "checkpoint",
           "data", "losses", "metrics", "schedules"]
