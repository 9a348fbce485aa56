"""binattn's drop-ins for the libraries users already run: ``binattn.hf`` (transformers'
``attn_implementation="binattn"``) and ``binattn.diffusers`` (an attention processor for
diffusers' transformers).

This package imports nothing itself: ``binattn.dropins.hf`` imports transformers and
``binattn.dropins.diffusers`` imports diffusers, each only when asked for, so ``import binattn``
stays free of both. Both call :func:`binattn.ops.binary_attention` and nothing else of binattn's
(the ops never import them).
"""
