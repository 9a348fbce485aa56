"""binattn.export (see docs/DESIGN.md)."""
