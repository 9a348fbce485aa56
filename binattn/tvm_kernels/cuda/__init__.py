"""tvm_kernels for CUDA."""
