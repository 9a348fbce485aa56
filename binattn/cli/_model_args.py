"""The options every verb that takes MODEL shares — ``--input NAME=SHAPE[:DTYPE]`` (repeatable),
``--input-shape``, ``--trust-pickle`` — and ``-o``'s ``--force``, with one loader behind them.

What it does: declares the click options once and turns them into a
``binattn.model_io.LoadedModel``; refuses an existing output file unless ``--force``.
What it does not: load files itself (``binattn.model_io``) or write outputs (``binattn._files``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import click

from ..errors import UserError

INPUT_HELP = ("Example input NAME=SHAPE[:DTYPE] (repeatable; dtype default float32), e.g. "
              "--input input_ids=2,16:int64 --input attention_mask=2,16:int64. Names the "
              "model's forward inputs; default: synthesized (the .pt2's own inputs, the image "
              "size, Hugging Face inputs from the config).")
INPUT_SHAPE_HELP = ("Unnamed example input shape(s), e.g. 1,3,224,224; several inputs: "
                    "'2,7,32;2,7,32'.")


def model_input_options(command: Callable) -> Callable:
    """Add ``--input``, ``--input-shape`` and ``--trust-pickle`` to a verb taking MODEL."""
    for option in reversed((
            click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE]",
                         help=INPUT_HELP),
            click.option("--input-shape", help=INPUT_SHAPE_HELP),
            click.option("--trust-pickle", is_flag=True,
                         help="Allow a torch.save'd MODEL that holds code (only for files you "
                              "trust)."))):
        command = option(command)
    return command


def force_option(command: Callable) -> Callable:
    """Add ``--force`` (overwrite an existing ``-o`` file)."""
    return click.option("--force", is_flag=True,
                        help="Overwrite OUTPUT if it exists (written atomically).")(command)


def load_from_options(model: Path, trust_pickle: bool, input_shape: Optional[str],
                      inputs: Sequence[str]):
    """The ``binattn.model_io.LoadedModel`` these options describe."""
    from ..model_inputs import parse_input_specs
    from ..model_io import load, parse_input_shapes

    return load(model, trust_pickle=trust_pickle, input_shape=parse_input_shapes(input_shape),
                inputs=parse_input_specs(inputs))


def refuse_existing(output: Optional[Path], force: bool) -> None:
    """An existing ``-o`` file is an error unless ``--force``."""
    if output is not None and not force and output.exists():
        raise UserError(f"-o {output} exists; pass --force to overwrite it")

