"""Outputs never replace inputs, and a failed command leaves no output behind.

:func:`refuse_overwrite` is called by every command before any work, with the paths it
reads and the paths it will write; an output that resolves to an input (the same path,
another path to the same file, a symbolic or hard link) or to another output is refused
with one line. :func:`remove_on_failure` deletes the outputs a command created when the
command fails (files and directories that did not exist when it started).
"""
import os
import shutil
from contextlib import contextmanager

from ..errors import InputError


def same_file(a, b):
    """True when paths ``a`` and ``b`` name the same file or directory (through links, too)."""
    if not a or not b:
        return False
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(inputs, outputs):
    """InputError if an output path is an input or another output.

    ``inputs`` and ``outputs`` map a label (``"--input"``, ``"config"``) to a path or None.
    """
    ins = [(k, v) for k, v in inputs.items() if v]
    outs = [(k, v) for k, v in outputs.items() if v]
    for i, (oname, opath) in enumerate(outs):
        for iname, ipath in ins:
            if same_file(opath, ipath):
                raise InputError(f"{oname} {opath} is the input {iname} {ipath}: refusing to write over an input")
        for oname2, opath2 in outs[i + 1:]:
            if same_file(opath, opath2):
                raise InputError(f"{oname} {opath} and {oname2} {opath2} are the same path")


@contextmanager
def remove_on_failure(*paths, keep=None):
    """On an exception inside the block, delete each of ``paths`` that did not exist on entry.

    ``keep(path)`` (optional) may return True to keep a directory (e.g. one that already
    holds training checkpoints).
    """
    fresh = [p for p in paths if p and not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        for p in fresh:
            try:
                if keep is not None and keep(p):
                    continue
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.lexists(p):
                    os.unlink(p)
            except OSError:
                pass
        raise
