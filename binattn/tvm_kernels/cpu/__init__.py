"""CPU (LLVM) kernels: ``kernels`` (TensorIR), ``target``, ``build``, ``dispatch`` (the provider),
``tune``, ``bench``. Knobs: ``binattn.schedules.cpu``."""
