"""Write a file under a temporary name, fsync, then rename: readers never see half a file."""
import errno
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, path) from None     # fsync/rename: name the file
        raise


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1)
            fh.write("\n")


class GuardedFile:
    """A binary file for h5py (``h5py.File(GuardedFile(path), "w")``) that turns a failed
    write (a full disk: ENOSPC, a quota: EDQUOT) into one Python ``OSError`` instead of
    HDF5 errors.

    When HDF5 itself meets a failed write it prints a traceback per cached chunk it cannot
    flush, its file can no longer be closed, and the interpreter may crash at exit. Here
    the first failed write is kept in :attr:`error` and later writes are dropped (the file
    is garbage from then on and must be removed), so HDF5 always sees success and closes
    normally; the owner checks :meth:`check` after writing and raises :attr:`error`, which
    names the file. Writes are unbuffered (no failure can surface later in a flush).
    """

    def __init__(self, path, name=None):
        self.path = path
        self.name = name or path          # the file named in the error
        self.raw = open(path, "w+b", buffering=0)
        self.error = None

    def write(self, data):
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    n = self.raw.write(view[done:])
                    if not n:
                        raise OSError(errno.EIO, "write wrote nothing")
                    done += n
            except OSError as exc:
                self.error = OSError(exc.errno, exc.strerror or str(exc), self.name)
                self.raw.seek(self.raw.tell() - done + len(view))
        else:
            self.raw.seek(len(view), os.SEEK_CUR)
        return len(view)

    def read(self, n=-1):
        return self.raw.read(n)

    def readinto(self, buf):
        return self.raw.readinto(buf)

    def seek(self, pos, whence=os.SEEK_SET):
        return self.raw.seek(pos, whence)

    def tell(self):
        return self.raw.tell()

    def truncate(self, size=None):
        try:
            return self.raw.truncate(size)
        except OSError as exc:
            if self.error is None:
                self.error = OSError(exc.errno, exc.strerror or str(exc), self.name)
            return size

    def flush(self):
        pass

    def fileno(self):
        return self.raw.fileno()

    def check(self):
        """Raise the first failed write (an OSError naming the file), if any."""
        if self.error is not None:
            raise self.error

    def close(self):
        self.raw.close()
