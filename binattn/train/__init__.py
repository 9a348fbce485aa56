"""binattn.train (see docs/DESIGN.md)."""
