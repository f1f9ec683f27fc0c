"""One campaign directory, one writer: an exclusive ``flock`` on ``DIR/.lock``.

World rank 0 of a ``simulate`` holds the lock from before the directory is prepared (stale
temporaries removed) to the end of the run, and writes its host and pid into the file. A
second ``simulate`` on the same directory is refused with one line naming the holder. The
kernel releases a ``flock`` when the holding process ends, however it ends (``kill -9``,
a node's job killed by SLURM), so a lock is never left stuck; the file itself stays and
is emptied on a clean release.

``flock`` is honoured across nodes on NFS (Linux emulates it with POSIX locks) and on
Lustre mounted with ``-o flock``; on a file system without it (Lustre ``-o noflock``)
``flock`` fails and the run is refused rather than left unprotected.
"""
import errno
import fcntl
import os
import socket

from ..errors import InputError

LOCK_NAME = ".lock"


class CampaignLock:
    """The writer's lock of directory ``root`` (which must exist): a campaign's
    (``command="simulate"``), or a training run's (``command="train"``: one ``train``
    process writes a run's checkpoints and log)."""

    def __init__(self, root, command="simulate"):
        self.root = os.fspath(root)
        self.path = os.path.join(self.root, LOCK_NAME)
        self.fd = None
        self.command = command
        self.label = "train config: out" if command == "train" else "config: out"

    def holder(self):
        """What the lock file says about its holder ("host H, pid P"), or a placeholder."""
        try:
            with open(self.path) as fh:
                text = fh.read().split()
        except (OSError, UnicodeDecodeError):
            text = []
        if len(text) >= 2:
            return f"host {text[0]}, pid {text[1]}"
        return "holder unknown: the lock was just taken"

    def acquire(self):
        """Take the lock or raise InputError naming the holder's host and pid."""
        if self.fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{self.label} {self.root}: cannot create the lock file {LOCK_NAME} "
                             f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(f"{self.label} {self.root} is being written by another cosmonet {self.command} "
                                 f"({self.holder()}); wait for it to end or stop it") from None
            raise InputError(f"{self.label} {self.root}: cannot lock {LOCK_NAME} ({exc.strerror}); "
                             f"the file system must support flock") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        """Empty the file and release the lock (idempotent)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
