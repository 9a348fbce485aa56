"""Console helpers of the pass's CLI verbs (inspect, convert): a report-wide rich console and
torch's log chatter silenced, so that bad input gives one line (``--debug`` shows everything).

What it does not: error handling (the CLI group turns ``UserError`` into exit code 2).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import click
from rich.console import Console

REPORT_WIDTH = 150
TORCH_LOGGERS = ("torch", "torch.export", "torch._export", "torch.fx", "torch._dynamo")


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("debug"))


def report_console(stderr: bool = False) -> Console:
    """A console wide enough for the site table when output is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else REPORT_WIDTH
    return Console(stderr=stderr, width=width)


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """Silence torch's warnings/tracebacks in its logs (kept with ``binattn --debug``)."""
    if _debug():
        yield
        return
    loggers = [logging.getLogger(name) for name in TORCH_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
