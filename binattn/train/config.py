"""``TrainConfig``: every option of the QAT + distillation trainer, checked on construction.

Options left at ``None`` take the recipe's default (see ``recipes.RECIPE_DEFAULTS``); e.g.
``top_n`` is 30 for HAD and off for BinaryAttention, ``attn_weight`` 1 for HAD and 0 for
BinaryAttention. ``top_n=0`` turns top-N off explicitly.

What it does not: run anything (``trainer``) or choose the loss terms (``recipes``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from ..errors import UserError
from ..ops.options import AttentionOptions
from .schedules import HAD_FRACTIONS

RECIPE_NAMES = ("binaryattention", "had", "fp")
DISTILL_KINDS = ("hard", "soft", "none")
TASKS = ("auto", "classification", "embedding")
PARALLEL_MODES = ("ddp", "fsdp")
AUTOCAST_DTYPES = ("bfloat16", "float16")
SITE_OPTIONS = ("scale_mode", "top_n", "pv_bits", "ste_clip")  # None: the recipe's default


@dataclass
class TrainConfig:
    """Options of :func:`binattn.train.train`.

    Attributes:
        recipe: ``"binaryattention"`` (mean|x| scales, STE clip 1, hard-label KD), ``"had"``
            (static calibrated scales, staged tanh→sign, attention-map + output KL, top-N) or
            ``"fp"`` (plain supervised training, no binarization logic; for FP baselines).
        epochs / steps: run length (``steps`` wins when set).
        batch_size: per rank; fixed (static-shape graphs accept one batch size).
        lr, weight_decay, warmup (fraction of steps), min_lr_ratio, grad_clip: AdamW + cosine.
            The learned attention bias, norms and 1-D parameters get no weight decay.
        bias_lr_mult: learning-rate multiplier for the learned attention bias.
        distill: ``"hard"`` (0.5·CE(labels) + 0.5·CE(argmax teacher)), ``"soft"`` (KL at
            ``kd_temperature``, mixed with CE) or ``"none"`` — for classification outputs.
        label_weight: weight of CE(labels) in the distillation mix.
        attn_weight: attention-map KL weight (HAD default 1; BinaryAttention default 0).
        hidden_weight: MSE between student and teacher per-site attention outputs (default 0).
        output_weight: weight of the output term (KL for logits, 1−cos+MSE for embeddings).
        scale_mode: override the recipe's scale mode (``"none"`` gives the sign-only ablation).
        top_n, pv_bits, ste_clip: site options (``None`` = recipe default; ``top_n=0`` = off);
            :meth:`site_options` derives the sites' ``AttentionOptions`` changes from them.
        calib_batches: HAD's calibration batches for the static scales (std of q and k).
        had_fractions: lengths of HAD's four stages as fractions of the run.
        task: ``"classification"`` (labels + logits), ``"embedding"`` (pure distillation on
            outputs) or ``"auto"`` (classification when labels are given).
        checkpoint / checkpoint_every / resume: save to this file every N steps and at the end;
            resume from it when it exists.
        stop_at: stop after this step (saving the checkpoint) without changing the schedule,
            for time-boxed jobs that resume later.
        eval_every: evaluate on ``eval_data`` every N steps (shown in the progress bar).
        log_every: read the step's loss and its parts from the device every N steps (one host
            read per N steps; a step itself makes none), update the progress bar's loss and
            stop at a non-finite loss, naming its step; also at evaluations and checkpoints.
        parallel: under torchrun (``WORLD_SIZE`` > 1), ``"ddp"`` (replicated student, gradients
            all-reduced) or ``"fsdp"`` (FSDP2 ``fully_shard``: parameters, gradients and AdamW
            state sharded over the ranks, for students too large to replicate). One process
            ignores it. Checkpoints are full either way and resume under either, at any number
            of ranks.
        autocast: ``"bfloat16"`` or ``"float16"`` runs the student's and the teacher's forward
            (and so the backward) under ``torch.autocast`` on the training device: matrix
            products in that dtype, parameters, optimizer state and losses in float32. On a
            CPU with AVX-512 BF16 (or AMX) ``"bfloat16"`` halves the time of the linear layers;
            on GPUs it is the usual mixed precision. ``None`` (default): float32 throughout.
            ``"float16"`` is for CUDA (no loss scaling is done: prefer ``"bfloat16"``).
        length_buckets: 0 (default) or a window in steps: text examples of similar length
            share a batch and each batch is cut to its longest example (``data.batches``), so
            short texts do not pay for the padding of long ones. Needs data with ``lengths``
            and a model that accepts any sequence length (captured with a dynamic one).
        compile: run the student's and the teacher's forward through ``torch.compile`` (default
            Inductor; binattn's ops stay extern kernels, the CUDA training path's SDPA and
            sign operands fuse). ``None`` (default) compiles on CUDA, where it pays off (a
            ViT-B/16 ``Trainer.step`` on an H100: 40.6 against 47.5 ms, docs/model_path.md),
            and not on CPU, where the first steps would pay minutes of compiling, nor for HAD
            (its temperature anneals every step: each new value would recompile). A compile
            that fails at the first step falls back to eager with a warning naming why.
    """

    recipe: str = "binaryattention"
    epochs: float = 60.0
    steps: Optional[int] = None
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: Optional[float] = 1.0
    bias_lr_mult: float = 1.0
    distill: str = "hard"
    kd_temperature: float = 1.0
    label_weight: float = 0.5
    attn_weight: Optional[float] = None
    hidden_weight: float = 0.0
    output_weight: float = 1.0
    embedding_mse_weight: float = 1.0
    scale_mode: Optional[str] = None
    top_n: Optional[int] = None
    pv_bits: Optional[int] = None
    ste_clip: Optional[float] = None
    calib_batches: int = 100
    had_fractions: tuple[float, float, float, float] = HAD_FRACTIONS
    task: str = "auto"
    seed: int = 0
    device: str = "cpu"
    checkpoint: Optional[str] = None
    checkpoint_every: int = 0
    resume: bool = True
    progress: bool = True
    eval_every: int = 0
    log_every: int = 10
    stop_at: Optional[int] = None
    parallel: str = "ddp"
    autocast: Optional[str] = None
    length_buckets: int = 0
    compile: Optional[bool] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.recipe in RECIPE_NAMES, f"recipe must be one of {RECIPE_NAMES}"),
            (self.distill in DISTILL_KINDS, f"distill must be one of {DISTILL_KINDS}"),
            (self.task in TASKS, f"task must be one of {TASKS}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup < 1, "warmup is a fraction of the steps, in [0, 1)"),
            (0 <= self.label_weight <= 1, "label_weight must be in [0, 1]"),
            (self.calib_batches >= 1, "calib_batches must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.parallel in PARALLEL_MODES, f"parallel must be one of {PARALLEL_MODES}"),
            (self.autocast is None or self.autocast in AUTOCAST_DTYPES,
             f"autocast must be None or one of {AUTOCAST_DTYPES}"),
            (self.length_buckets >= 0, "length_buckets must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"TrainConfig: {message} (got {self._field_of(message)!r})")
        try:
            self.site_options({})   # the op options are checked where they are defined
        except (TypeError, ValueError) as err:
            raise UserError(f"TrainConfig: {err} (top_n=0 turns top-N off)" if
                            str(err).startswith("top_n") else f"TrainConfig: {err}") from err
        self.had_fractions = tuple(float(f) for f in self.had_fractions)

    def site_options(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The op options training sets on every site (``set_options``): each of
        :data:`SITE_OPTIONS` this config sets, else the recipe's ``defaults`` (``top_n`` 0 is
        off), with the ``sign`` binarizer at temperature 1 — checked as ``AttentionOptions``."""
        values: dict[str, Any] = dict(binarizer="sign", temperature=1.0)
        for name in SITE_OPTIONS:
            own = getattr(self, name)
            values[name] = defaults.get(name) if own is None else own
        values["top_n"] = values["top_n"] or None
        base = AttentionOptions()   # an option left unset where None is no value (fp recipe)
        values = {k: v for k, v in values.items() if v is not None or getattr(base, k) is None}
        base.replace(**values)
        return values

    def _field_of(self, message: str) -> Any:
        name = message.split()[0]
        return getattr(self, name, None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "had_fractions" else v)
                      for k, v in values.items() if k in known})
