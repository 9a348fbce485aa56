"""binattn.hw_targets (see docs/DESIGN.md)."""
