"""binattn.tvm_kernels (see docs/DESIGN.md)."""
