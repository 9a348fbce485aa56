"""``binattn.diffusers``: the diffusers drop-in, an attention processor that runs binary
attention (importing it imports diffusers). Code and docs: ``binattn/dropins/diffusers.py``.
"""
from .dropins.diffusers import *  # noqa: F401,F403
from .dropins.diffusers import __all__  # noqa: F401
