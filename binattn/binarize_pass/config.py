"""``BinarizeConfig``: every option of the binarize pass, with checks that name the bad option.

What it does: holds the op options each rewritten site starts with as one ``AttentionOptions``
(scale mode, binarizer, top-N, 8-bit P/V, ...; checked there) and the learned-bias choice (kind,
token grid, prefix tokens, fallback). What it does not: find or rewrite anything (``matchers``,
``rewrite``) or decide a site's causality and softmax scale (its graph does).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..ops.options import OPTION_NAMES, AttentionOptions, option_properties

BIAS_KINDS = ("relpos", "relpos_1d", "dense", "head", None)
FALLBACK_KINDS = ("relpos_1d", "dense", "head", None)
SITE_MODES = ("binary", "float")
SITE_ONLY = ("is_causal", "scale")   # options each site takes from its own graph
CONFIG_OPTIONS = tuple(name for name in OPTION_NAMES if name not in SITE_ONLY)


@dataclass(init=False)
class BinarizeConfig:
    """Options of :func:`binattn.binarize`.

    Attributes:
        bias: learned bias added to the binary scores: ``"relpos"`` (BEiT relative-position table
            per head over a Gh×Gw grid plus prefix tokens), ``"relpos_1d"`` (a table per head
            over the 1-D offsets j − i clipped to ±``relpos_distance``: any sequence length,
            dynamic lengths included, zero init), ``"dense"`` ([H, Nq, Nk]), ``"head"`` (one
            scalar per head) or None.
        grid: (Gh, Gw) token grid for ``"relpos"``; inferred where the model makes it clear.
        num_prefix_tokens: cls/register tokens before the grid; inferred with the grid.
        bias_fallback: what a site gets when ``"relpos"`` cannot be inferred for it
            (``"relpos_1d"``, ``"dense"``, ``"head"`` or None); the report says so.
        relpos_distance: R of ``"relpos_1d"``: offsets beyond ±R share the table's end rows.
        mode: ``"binary"`` or ``"float"`` (exact full-precision attention at each site).
        dynamic_batch: export with a symbolic batch dim where the model allows it.
        seed: seeds the relpos tables' trunc-normal init (per site), so binarizing the same
            model twice gives the same parameters.
        options: the :class:`AttentionOptions` every site starts with (its ``is_causal`` and
            ``scale`` come from the site's graph). The constructor also takes them one by one
            (``scale_mode``, ``top_n``, ``pv_bits``, ``binarizer``, ``temperature``,
            ``ste_clip``: applied on top of ``options``), and each is readable and settable as
            an attribute of the config.
    """

    bias: Optional[str]
    grid: Optional[tuple[int, int]]
    num_prefix_tokens: Optional[int]
    bias_fallback: Optional[str]
    relpos_distance: int
    mode: str
    dynamic_batch: bool
    seed: int
    options: AttentionOptions

    def __init__(self, bias: Optional[str] = None, grid: Optional[tuple[int, int]] = None,
                 num_prefix_tokens: Optional[int] = None, bias_fallback: Optional[str] = "head",
                 *, relpos_distance: int = 32, mode: str = "binary",
                 dynamic_batch: bool = True, seed: int = 0,
                 options: Optional[AttentionOptions] = None, **option_values: Any) -> None:
        site_only = sorted(set(SITE_ONLY) & set(option_values))
        if site_only:
            raise TypeError(f"BinarizeConfig does not take {site_only}: each site's causality "
                            "and softmax scale come from its graph")
        self.bias, self.grid, self.num_prefix_tokens = bias, grid, num_prefix_tokens
        self.bias_fallback, self.mode = bias_fallback, mode
        self.relpos_distance = relpos_distance
        self.dynamic_batch, self.seed = dynamic_batch, seed
        self.options = (options or AttentionOptions()).replace(**option_values)
        self._check()

    def _check(self) -> None:
        if self.bias not in BIAS_KINDS:
            raise ValueError(f"bias must be one of {BIAS_KINDS}, got {self.bias!r}")
        if self.bias_fallback not in FALLBACK_KINDS:
            raise ValueError(f"bias_fallback must be one of {FALLBACK_KINDS}, got "
                             f"{self.bias_fallback!r}")
        if (isinstance(self.relpos_distance, bool) or not isinstance(self.relpos_distance, int)
                or self.relpos_distance < 1):
            raise ValueError(f"relpos_distance must be an int >= 1, got "
                             f"{self.relpos_distance!r}")
        if self.grid is not None:
            if len(tuple(self.grid)) != 2 or min(self.grid) < 1:
                raise ValueError(f"grid must be two positive ints (Gh, Gw), got {self.grid!r}")
            self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.num_prefix_tokens is not None and self.num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {self.num_prefix_tokens}")
        if self.mode not in SITE_MODES:
            raise ValueError(f"mode must be one of {SITE_MODES}, got {self.mode!r}")

    def site_options(self, is_causal: bool, scale: Optional[float],
                     **found: Any) -> AttentionOptions:
        """The options of a site with this causality and softmax scale (from its graph) and
        ``found`` (options the graph itself sets, e.g. a binarized program's) over the
        config's."""
        return self.options.replace(is_causal=is_causal, scale=scale, **found)

    def to_dict(self) -> dict:
        """The config as one flat dict (the options' fields beside the pass's own)."""
        flat = {k: v for k, v in asdict(self).items() if k != "options"}
        flat.update({name: getattr(self.options, name) for name in CONFIG_OPTIONS})
        return flat


option_properties(BinarizeConfig, CONFIG_OPTIONS)
