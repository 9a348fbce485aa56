"""Errors binattn raises for bad user input (shown as one line by the CLI, exit code 2)."""


class UserError(ValueError):
    """Bad input from the user: a missing/corrupt file, an unsupported model, a bad option."""
