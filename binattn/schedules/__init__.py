"""binattn.schedules: what the kernels are built with — knobs, defaults and tuned databases, one
subpackage per target, and the tuning database directory (``database``). Data only: the tuners
that build kernels are in ``binattn.tvm_kernels``. See docs/DESIGN.md."""
