"""binattn's command line: one click group whose verbs live one per module in this package.

``binattn/cli/<verb>.py`` defines a click command named ``command``; the group imports a verb's
module only when that verb runs (or for ``--help``), so ``binattn --help`` stays fast and a
verb whose optional dependencies are missing fails alone, with a clear message.

Errors: verbs raise ``click.ClickException``/``UsageError`` (or ``binattn.errors.UserError``)
for bad input: one line on stderr, exit code 2, no traceback unless ``--debug``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .._version import __version__
from ..errors import UserError

VERBS = {
    "demo": "Run the end-to-end demo on the built-in model.",
    "inspect": "List the attention sites of a model and what the pass would do.",
    "convert": "Binarize a model's attention and save it as a .pt2.",
    "train": "QAT + self-distillation of a binarized model.",
    "tune": "Autotune binattn's TVM kernels and store the best schedules.",
    "bench": "Benchmark binattn's kernels against SDPA.",
    "build-kernels": "Build binattn's CUDA kernels into shared objects.",
    "export": "Export a binarized model to MLIR or ONNX.",
    "asic": "Emit the simulated CAM-accelerator target descriptor.",
}


def _module_name(verb: str) -> str:
    return f"{__name__}.{verb.replace('-', '_')}_cmd"


def available_verbs() -> list[str]:
    """Verbs whose module exists in this installation."""
    return [v for v in VERBS if importlib.util.find_spec(_module_name(v)) is not None]


class LazyGroup(click.Group):
    """A group that imports each verb's module on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return available_verbs()

    def get_command(self, ctx: click.Context, name: str):
        if name not in VERBS or importlib.util.find_spec(_module_name(name)) is None:
            return None
        return importlib.import_module(_module_name(name)).command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="binattn")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """binattn: 1-bit query/key attention for PyTorch models.

    Find the attention in a model, rewrite it to sign-pack + popcount ops with a learned bias,
    train it back to full-precision quality, run it on TVM-built kernels, and cost it on a
    simulated CAM accelerator.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
