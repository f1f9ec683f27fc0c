"""Assertions on finished ``cosmonet`` subprocesses, shared by the command-line tests."""
import hashlib
import os


def describe(proc):
    return f"exit {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}"


def assert_clean_error(proc, *needles):
    """Exit 2, exactly one ``cosmonet: error:`` line naming the problem, no traceback, no stdout."""
    assert "Traceback" not in proc.stderr, describe(proc)
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("cosmonet: error: "), describe(proc)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named in the error line\n{describe(proc)}"
    assert proc.stdout.strip() == "", describe(proc)


def file_tree(root):
    """{relative path: sha256 (files) or 'dir' / 'link -> target'} of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link -> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out
