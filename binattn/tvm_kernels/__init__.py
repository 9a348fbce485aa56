"""binattn.tvm_kernels: the kernels, one subpackage per target (``cpu/``: TensorIR → LLVM,
built and cached on first use; ``cuda/``: TVMScript → prebuilt ``.so``), each with its build,
dispatch (the provider ``ops.dispatch`` imports by name), tuning and bench. See docs/DESIGN.md."""
