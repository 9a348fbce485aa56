"""``binattn.hf``: the transformers drop-in, ``attn_implementation="binattn"`` (importing it
imports transformers and registers the implementation). Code and docs: ``binattn/dropins/hf.py``.
"""
from .dropins.hf import *  # noqa: F401,F403
from .dropins.hf import __all__  # noqa: F401
