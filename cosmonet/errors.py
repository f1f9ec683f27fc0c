"""Exceptions that the command line reports as one clear line (exit code 2)."""


class InputError(ValueError):
    """Bad user input: a parameter, a file or a path that cannot be used.

    The message must be one line that names the offending input, e.g.
    ``"--nc must be >= 2 (got 1)"``. The CLI prints it to stderr and exits with 2.
    """
