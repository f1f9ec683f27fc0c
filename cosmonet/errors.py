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


#: characters of a value that an error message quotes before it cuts it short
SHOWN_CHARS = 60


def shown(value, limit=SHOWN_CHARS):
    """``repr(value)`` for an error message, cut to its first ``limit`` characters with an
    ellipsis and the full length when longer, e.g. ``'aaaa…' (1048576 chars)``: an error
    line quotes a prefix of a huge value (a 1 MB ``--set`` value, a 100k-character path),
    never all of it."""
    text = value if isinstance(value, str) else repr(value)
    quoted = repr(text) if isinstance(value, str) else text
    if len(quoted) <= limit:
        return quoted
    return f"{quoted[:limit]}… ({len(text)} chars)"


#: the longest error line the command line prints (characters after ``cosmonet: error: ``)
LINE_CHARS = 500
#: a run of characters without a space longer than this is cut in an error line
WORD_CHARS = 200


def short_line(msg, limit=LINE_CHARS, word=WORD_CHARS):
    """``msg`` (one line) made at most about ``limit`` characters long: every run of
    non-space characters longer than ``word`` keeps its first ``word - 20`` characters,
    an ellipsis and its length; a line still too long keeps its start (which names the
    option or file) and its end (which says what is wrong) around ``… (N chars) …``."""
    import re

    def cut(m):
        s = m.group(0)
        return f"{s[:word - 20]}…({len(s)} chars)"
    msg = re.sub(r"\S{%d,}" % (word + 1), cut, msg)
    if len(msg) <= limit:
        return msg
    head, tail = limit * 3 // 5, limit // 3
    return f"{msg[:head]} … ({len(msg) - head - tail} chars) … {msg[-tail:]}"
