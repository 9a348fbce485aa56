"""End-to-end benchmark: every model of the table on every path a user would time, in one run.

``python benchmarks/e2e.py [--device cuda|cpu] [--models vit_b,bert,...] [--quick] [--out DIR]``.
The models, paths, timing and columns live in ``binattn/bench/e2e.py`` (``binattn bench
--model NAME`` runs one row from the same code); this script picks them, prints the markdown
tables (device named) and writes ``e2e.json`` (rows with errors and tracebacks) into ``--out``
(and ``e2e_rows.jsonl`` row by row as they are measured, which a timeout leaves behind).
On CUDA the models run in bf16 at their full size and the op call cost table is added; on CPU
(float32) and with ``--quick`` at the small size.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from binattn.bench.e2e import PATHS, log_line, run, table
from binattn.bench.models import MODELS, TABLE


def _names(text: str, known, flag: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the small size, fewer reps")
    parser.add_argument("--models", default=",".join(TABLE),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated paths")
    parser.add_argument("--reps", type=float, default=None,
                        help="ms of timed repetitions per path (default 300 CUDA, 1000 CPU)")
    parser.add_argument("--no-op", action="store_true", help="skip the op call cost table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU (use --device cpu)")
    device = torch.device(args.device)
    size = "small" if args.quick or device.type == "cpu" else "full"
    reps = args.reps or (50 if args.quick else 300 if device.type == "cuda" else 1000)
    names = _names(args.models, MODELS, "--models")
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "e2e_rows.jsonl"   # row by row: what a timeout leaves
    partial.write_text("")

    def on_row(row: dict) -> None:
        print(log_line(row), flush=True)
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")

    result = run(names, device, size, reps, _names(args.paths, PATHS, "--paths"),
                 with_op=not args.no_op, on_row=on_row)
    print(table(result["rows"], result["device"], result["op"]))
    (args.out / "e2e.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
