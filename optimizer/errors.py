"""Exceptions that the CLI turns into one-line messages and exit codes."""


class OnnxoptError(Exception):
    """Bad input or usage: the model, a path or an option cannot be used (exit code 2)."""

    exit_code = 2


class VerificationError(OnnxoptError):
    """The transformed model does not match the original within tolerance (exit code 1)."""

    exit_code = 1
