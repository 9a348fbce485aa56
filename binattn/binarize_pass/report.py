"""The pass's report: one row per attention site, printable as a rich table and as JSON.

What it does: describes each site (module path, matcher, shapes B/Hq/Hkv/Nq/Nk/D/Dv, mask,
causal, scale, learned bias) and its status, "rewritten" or "skipped: <reason>", and says so
when a model has no attention at all; every softmax not taken for attention is listed with why
(``Miss``), and a site's notes (e.g. a soft-cap kept in float mode only) are printed with it.
What it does not: decide anything (``rewrite`` does).
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rich import box
from rich.console import Console
from rich.table import Table

from .matchers import Match, hint, meta_val, module_path

REWRITTEN = "rewritten"
SHAPE_KEYS = ("B", "Hq", "Hkv", "Nq", "Nk", "D", "Dv")


def site_shape(m: Match) -> dict[str, int]:
    """B, Hq, Hkv, Nq, Nk, D, Dv of a match (3-D sites count as one head)."""
    if m.shape is not None:
        return dict(m.shape)
    q, k, v = (meta_val(x) for x in (m.q, m.k, m.v))
    if q is None or k is None or v is None:
        return {key: -1 for key in SHAPE_KEYS}
    k_shape = list(k.shape)
    if m.k_transposed:
        k_shape[-2], k_shape[-1] = k_shape[-1], k_shape[-2]
    four = q.dim() == 4
    return {"B": hint(q.shape[0]), "Hq": hint(q.shape[1]) if four else 1,
            "Hkv": hint(k_shape[1]) if four else 1, "Nq": hint(q.shape[-2]),
            "Nk": hint(k_shape[-2]), "D": hint(q.shape[-1]), "Dv": hint(v.shape[-1])}


@dataclass
class SiteRow:
    """One attention site as the report shows it."""

    index: int
    module_path: str
    matcher: str
    shape: dict[str, int]
    mask: str
    causal: bool
    scale: Optional[float]
    status: str
    bias: str = "-"
    notes: list[str] = field(default_factory=list)

    @property
    def rewritten(self) -> bool:
        return self.status == REWRITTEN

    @classmethod
    def from_match(cls, index: int, m: Match) -> "SiteRow":
        return cls(index=index, module_path=module_path(m.anchor), matcher=m.matcher,
                   shape=site_shape(m), mask=m.mask_desc, causal=m.is_causal, scale=m.scale,
                   status=f"skipped: {m.skip}" if m.skip else REWRITTEN,
                   bias="from graph" if m.bias_node is not None else "-", notes=list(m.notes))


@dataclass
class Miss:
    """A softmax the pass did not take for attention, and why (the node that broke the match
    and what was expected there)."""

    module_path: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"softmax `{self.node}` in {self.module_path} not rewritten: {self.reason}"


@dataclass
class Report:
    """Every attention site the pass found in a model, rewritten or skipped (with the reason)."""

    model: str
    rows: list[SiteRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)

    @property
    def num_rewritten(self) -> int:
        return sum(r.rewritten for r in self.rows)

    @property
    def num_skipped(self) -> int:
        return len(self.rows) - self.num_rewritten

    @property
    def summary(self) -> str:
        missed = (f"; {len(self.misses)} softmax(es) not matched as attention (why below)"
                  if self.misses else "")
        if not self.rows:
            return f"{self.model}: no attention found{missed or ' (nothing to rewrite)'}"
        return (f"{self.model}: {len(self.rows)} attention site(s), {self.num_rewritten} "
                f"rewritten, {self.num_skipped} skipped{missed}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "summary": self.summary,
                "num_sites": len(self.rows), "num_rewritten": self.num_rewritten,
                "num_skipped": self.num_skipped, "notes": list(self.notes),
                "misses": [asdict(m) for m in self.misses],
                "sites": [asdict(r) for r in self.rows]}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> Table:
        table = Table(title=self.summary, title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True, padding=(0, 1))
        for col in ("#", "module", "matcher", "B×H×Nq×Nk×D", "mask", "scale", "bias", "status"):
            table.add_column(col, overflow="fold", min_width=9 if col == "status" else None,
                             no_wrap=col in ("#", "module", "B×H×Nq×Nk×D", "scale", "bias"))
        for r in self.rows:
            s = r.shape
            heads = f"{s['Hq']}" if s["Hq"] == s["Hkv"] else f"{s['Hq']}/{s['Hkv']}"
            shape = f"{s['B']}×{heads}×{s['Nq']}×{s['Nk']}×{s['D']}"
            mask = " + ".join(p for p in (("causal" if r.causal else ""),
                                          ("" if r.mask == "-" else r.mask)) if p) or "-"
            scale = "1/√D" if r.scale is None else f"{r.scale:.4g}"
            status = f"[green]{r.status}[/]" if r.rewritten else f"[yellow]{r.status}[/]"
            table.add_row(str(r.index), r.module_path, r.matcher, shape, mask, scale, r.bias,
                          status)
        return table

    def __rich__(self) -> Table:
        return self.table()

    def __str__(self) -> str:
        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self.table())
        for note in self.notes:
            console.print(note)
        return console.export_text()
