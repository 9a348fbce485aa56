"""CUDA kernels: TVMScript sources (``attention``, ``attention_pv8``, ``sign_pack``, ``quantize_v``,
``popcount``), ``build`` (TVM + nvcc → ``binattn/kernels``), ``dispatch`` (the provider),
``tune``, ``bench``. Knobs: ``binattn.schedules.cuda``."""
