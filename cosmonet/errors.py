"""Exceptions that the command line reports as one clear line: bad input (exit code 2) and a
training run that cannot go on (exit code 3)."""


class InputError(ValueError):
    """Bad user input: a parameter, a file or a path that cannot be used.

    The message must be one line that names the offending input, e.g.
    ``"--nc must be >= 2 (got 1)"``. The CLI prints it to stderr and exits with 2.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or data); the message names the step and the
    last good checkpoint. ``cosmonet train`` prints it and exits with 3."""
