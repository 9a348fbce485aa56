"""binattn.binarize_pass (see docs/DESIGN.md)."""
