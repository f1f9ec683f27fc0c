"""Horovod (PyTorch frontend) works under ``mpirun -np 2``: init, allreduce and a
``DistributedOptimizer`` step.  Skipped when ``horovod.torch`` does not import; build it
with ``make horovod`` (scripts/build_horovod.sh, docs/horovod.md)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from mpi_util import mpirun

pytestmark = pytest.mark.mpi


def _horovod_import_error():
    """None when ``import horovod.torch`` works in this interpreter, else the reason.

    Checked in a subprocess: a broken horovod build can abort the interpreter
    (undefined symbols in the extension), which must not take pytest down."""
    if importlib.util.find_spec("horovod") is None:
        return "horovod is not installed"
    try:
        proc = subprocess.run([sys.executable, "-c", "import horovod.torch"],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "import horovod.torch timed out"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
    return lines[-1]


_IMPORT_ERROR = _horovod_import_error()
requires_horovod = pytest.mark.skipif(
    _IMPORT_ERROR is not None,
    reason=f"horovod.torch does not import ({_IMPORT_ERROR}); build it with `make horovod`")

WORKER = r'''
import json
import sys
import torch
import horovod.torch as hvd

hvd.init()
rank, size = hvd.rank(), hvd.size()
mean_rank = hvd.allreduce(torch.tensor([float(rank)]), op=hvd.Average, name="mean_rank").item()
sum_rank = hvd.allreduce(torch.tensor([float(rank)]), op=hvd.Sum, name="sum_rank").item()

# A tiny model, initialised differently on each rank, then synchronised from rank 0.
torch.manual_seed(100 + rank)
model = torch.nn.Linear(4, 1)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
p0 = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
lr = 0.1
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr),
                               named_parameters=model.named_parameters())
# Different data on each rank: the step must use the rank-averaged gradient.
x, y = torch.randn(8, 4), torch.randn(8, 1)
opt.zero_grad()
torch.nn.functional.mse_loss(model(x), y).backward()
opt.step()
p1 = torch.cat([p.detach().flatten() for p in model.parameters()])

# Expected: one SGD step with the full-batch gradient over both ranks' data
# (equal batch sizes, so the mean of the per-rank means).
xs = hvd.allgather(x, name="xs")
ys = hvd.allgather(y, name="ys")
ref = torch.nn.Linear(4, 1)
with torch.no_grad():
    for q, v in zip(ref.parameters(), p0.split([4, 1])):
        q.copy_(v.view_as(q))
torch.nn.functional.mse_loss(ref(xs), ys).backward()
expected = p0 - lr * torch.cat([q.grad.flatten() for q in ref.parameters()])

all_p1 = hvd.allgather(p1.unsqueeze(0), name="params")
result = {
    "rank": rank, "size": size, "local_rank": hvd.local_rank(),
    "mean_rank": mean_rank, "sum_rank": sum_rank,
    "mpi_built": bool(hvd.mpi_built()), "gloo_built": bool(hvd.gloo_built()),
    "params": p1.tolist(),
    "max_param_diff_between_ranks": (all_p1 - all_p1[0]).abs().max().item(),
    "max_diff_from_expected": (p1 - expected).abs().max().item(),
    "step_size": (p1 - p0).abs().max().item(),
}
# One file per rank: the ranks' stdout lines can interleave under mpirun.
with open(f"{sys.argv[1]}/result{rank}.json", "w") as f:
    json.dump(result, f)
print(f"rank {rank}/{size}: mean_rank={mean_rank} max_param_diff={result['max_param_diff_between_ranks']}",
      flush=True)
hvd.shutdown()
'''


@requires_horovod
def test_horovod_allreduce_and_distributed_optimizer_on_2_ranks(tmp_path):
    worker = tmp_path / "hvd_worker.py"
    worker.write_text(WORKER)
    proc = mpirun(2, [sys.executable, worker, tmp_path], timeout=240)
    files = sorted(tmp_path.glob("result*.json"))
    assert len(files) == 2, proc.stdout + proc.stderr
    results = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["size"] == 2
        assert r["mpi_built"] or r["gloo_built"]
        assert r["mean_rank"] == pytest.approx(0.5, abs=1e-7)
        assert r["sum_rank"] == pytest.approx(1.0, abs=1e-7)
        assert r["step_size"] > 0                       # the optimizer did move the weights
        assert r["max_param_diff_between_ranks"] == 0.0  # identical on both ranks, bit for bit
        assert r["max_diff_from_expected"] < 1e-6       # and equal to the averaged-gradient step
    assert results[0]["params"] == results[1]["params"]
