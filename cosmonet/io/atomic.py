"""Write a file under a temporary name, fsync, then rename: readers never see half a file."""
import json
import os
import tempfile
from contextlib import contextmanager

from ..errors import InputError


def check_writable_dir(path):
    """Raise :class:`InputError` unless the directory that will hold ``path`` is writable."""
    if os.path.isdir(path):
        raise InputError(f"output path {path} is a directory, expected a file name")
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        what = "is not a directory" if os.path.exists(d) else "does not exist"
        raise InputError(f"output directory {d} {what}")
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"output directory {d} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cosmonet-probe-", dir=d)
    except OSError as exc:
        raise InputError(f"output directory {d} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            fh.write("\n")
