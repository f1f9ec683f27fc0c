"""run-sim's file is written slab by slab as the simulation makes its fields
(cosmonet/io/simwriter.py): the same file as writing the finished result, uneven slabs in
several messages, and a full disk on rank 0 stopping every rank with one error."""
import errno
import json
import os
import sys

import h5py
import numpy as np
import pytest

from mpi_util import mpirun

MPI = pytest.importorskip("mpi4py.MPI")

from cosmonet.io.simfile import write_simulation       # noqa: E402
from cosmonet.io.simwriter import SimFileWriter, run_to_file  # noqa: E402
from cosmonet.sim.simulation import SimConfig, run_simulation  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "mpi", "check_sim_writer.py")


def _contents(path):
    with h5py.File(path, "r") as f:
        data = {}
        f.visititems(lambda name, obj: data.__setitem__(name, (obj[...] if isinstance(obj, h5py.Dataset) else None,
                                                                dict(obj.attrs))))
        return dict(f.attrs), data


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype
    return a == b


def test_streamed_file_equals_the_finished_results_file(tmp_path):
    """Fields written while the simulation runs (ZA and 2LPT before the N-body steps, the
    a = 0.5 output during them): every dataset, dtype and attribute as writing the whole
    result at the end, and the run keeps no fields; a simulation after it (on a fresh LPT
    mesh: the streamed run frees its own) gives the same fields again."""
    cfg = SimConfig(nc=12, box=48.0, steps=4, seed=5, save_a=(0.5, 1.0))
    write_simulation(str(tmp_path / "whole.h5"), run_simulation(cfg, MPI.COMM_SELF), {"engine": "mpi"})
    res = run_to_file(str(tmp_path / "streamed.h5"), cfg, MPI.COMM_SELF, extra_attrs={"engine": "mpi"})
    assert res.fields == {}
    # the one-off run freed its LPT mesh; the next simulation makes a fresh one, same bits
    again = run_simulation(cfg, MPI.COMM_SELF).fields
    assert res.timers.counts["write"] == 12          # 6 fields at 2 outputs
    attrs_a, data_a = _contents(tmp_path / "whole.h5")
    attrs_b, data_b = _contents(tmp_path / "streamed.h5")
    assert attrs_a.keys() == attrs_b.keys() and all(_same(attrs_a[k], attrs_b[k]) for k in attrs_a)
    assert sorted(data_a) == sorted(data_b)
    assert sum(v[0] is not None for v in data_a.values()) == 12
    for name, (arr, at) in data_a.items():
        assert _same(arr, data_b[name][0]), name
        if arr is not None:
            assert _same(arr, again[name]), name
        assert at.keys() == data_b[name][1].keys() and all(_same(at[k], data_b[name][1][k]) for k in at), name
    assert sorted(os.listdir(tmp_path)) == ["streamed.h5", "whole.h5"]


def test_a_failed_run_leaves_no_file(tmp_path):
    """An exception between two fields (a stopped run) removes the partial file."""
    cfg = SimConfig(nc=8, box=32.0, steps=2, seed=1)

    def stop(step, a):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_to_file(str(tmp_path / "sim.h5"), cfg, MPI.COMM_SELF, progress=stop)
    assert os.listdir(tmp_path) == []


def test_slabs_that_do_not_tile_the_box_are_refused(tmp_path):
    cfg = SimConfig(nc=8, box=32.0, steps=2, seed=1)
    with pytest.raises(ValueError, match="expected float32"):
        with SimFileWriter(str(tmp_path / "a.h5"), MPI.COMM_SELF, cfg) as w:
            w.write("za/disp", np.zeros((3, 8, 8, 8), np.float64), 0)
    with pytest.raises(ValueError, match="cover each of the 8 x-planes once"):
        with SimFileWriter(str(tmp_path / "b.h5"), MPI.COMM_SELF, cfg) as w:
            w.write("za/disp", np.zeros((3, 7, 8, 8), np.float32), 0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ranks", [3])
def test_uneven_slabs_in_several_messages(tmp_path, ranks):
    """nc 10 on 3 ranks (4, 3, 3 planes), two planes per message: every value lands."""
    proc = mpirun(ranks, [sys.executable, SCRIPT, tmp_path, "ok"],
                  timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["raised"] == [None] * ranks
    assert report["equal"] == [True, True, True]
    assert report["units"] == ["Mpc/h", "km/s"] and report["group_a"] == 0.5
    assert report["attrs"] == {"nc": 10, "engine": "mpi", "seed": 3, "save_a": [0.5, 1.0]}
    assert report["files"] == ["sim.h5"]


def test_full_disk_on_rank_0_stops_every_rank(tmp_path):
    """ENOSPC on rank 0's second field: every rank raises it, naming the file, none hangs,
    and no file (nor temporary) is left."""
    proc = mpirun(3, [sys.executable, SCRIPT, tmp_path, "enospc"],
                  timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["raised"] == [[errno.ENOSPC, str(tmp_path / "sim.h5")]] * 3
    assert report["files"] == []
