"""How a process that ran a torch.distributed group ends (cosmonet.train.dist.end_process).

torch cannot join the gloo threads of a group DDP has used, and one of them freeing a
tensor during interpreter finalisation aborted 2-rank runs that had succeeded (exit 134).
Such a process therefore leaves through ``os._exit`` with its streams flushed.
"""
import subprocess
import sys

SCRIPT = r"""
import atexit, os, sys
import torch
import torch.distributed as dist
from cosmonet.train import dist as cdist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(cdist._free_port()))
if sys.argv[1] == "group":
    dist.init_process_group("gloo", rank=0, world_size=1)
    cdist._group_threads_left = True
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    model(torch.ones(2, 3)).sum().backward()
atexit.register(lambda: print("finaliser ran", flush=True))
print("summary line", end="")          # no newline and no flush: end_process must flush it
sys.exit(cdist.end_process(int(sys.argv[2])))
"""


def _run(mode, code):
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, str(code)],
                          capture_output=True, text=True, timeout=120)


def test_a_process_with_a_group_exits_at_once_with_its_code_and_output():
    proc = _run("group", 3)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "summary line"          # flushed, and no finaliser ran after it


def test_a_process_without_a_group_returns_and_finalises_normally():
    proc = _run("none", 0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "summary line" + "finaliser ran\n"
