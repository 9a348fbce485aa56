"""tvm_kernels for CPU."""
