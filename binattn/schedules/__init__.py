"""binattn.schedules (see docs/DESIGN.md)."""
