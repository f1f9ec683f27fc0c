"""Pretend the optional packages are not installed (tests/test_install.py).

A directory on PYTHONPATH holding this file makes every ``import`` of the packages that
only the extras bring (mpi4py, mpi4py-fft, numba, pyfftw, horovod) fail exactly as
it fails where they are absent: ``ModuleNotFoundError`` with the module's name. Set
``COSMONET_BLOCK`` to a comma-separated list to block other top-level modules instead.
"""
import os
import sys

_DEFAULT = "mpi4py,mpi4py_fft,numba,llvmlite,pyfftw,horovod"
BLOCKED = frozenset(m for m in os.environ.get("COSMONET_BLOCK", _DEFAULT).split(",") if m)


class _Blocker:
    """A meta-path finder that refuses the blocked top-level packages and their submodules."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/no_extras)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
