"""Results do not depend on the number of ranks: 1, 2 and 4 (oversubscribed)."""
import os

import h5py
import numpy as np
import pytest

from mpi_util import cosmonet_exe, mpirun

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.mpi


def test_mesh_operations_equal_on_1_2_4_ranks(tmp_path):
    out = {}
    for n in (1, 2, 4):
        path = tmp_path / f"mesh{n}.npz"
        mpirun(n, [os.sys.executable, os.path.join(HERE, "mpi", "check_mesh.py"), path])
        out[n] = np.load(path)
    for n in (2, 4):
        np.testing.assert_array_equal(out[n]["noise"], out[1]["noise"])     # bit for bit
        np.testing.assert_allclose(out[n]["field"], out[1]["field"], atol=1e-12)
        np.testing.assert_allclose(out[n]["readback"], out[1]["readback"], atol=1e-12)
        np.testing.assert_allclose(out[n]["power"], out[1]["power"], rtol=1e-10)
        np.testing.assert_array_equal(out[n]["modes"], out[1]["modes"])


def test_run_sim_equal_on_1_2_4_ranks(tmp_path):
    box = 128.0
    files = {}
    for n in (1, 2, 4):
        files[n] = tmp_path / f"sim{n}.h5"
        mpirun(n, [cosmonet_exe(), "run-sim", "--nc", 16, "--box", box, "--steps", 5, "--boost", 2,
                   "--seed", 42, "--out", files[n], "--quiet"])
    with h5py.File(files[1], "r") as ref:
        names = [f"{g}/{d}" for g in ("za", "lpt2", "fastpm") for d in ("disp", "vel")]
        for n in (2, 4):
            with h5py.File(files[n], "r") as f:
                assert int(f.attrs["n_ranks"]) == n
                for name in names:
                    a, b = ref[name][...], f[name][...]
                    assert a.shape == b.shape == (3, 16, 16, 16)
                    scale = box if name.endswith("disp") else np.abs(a).max()
                    err = np.abs(a - b).max() / scale
                    assert err < 1e-5, (n, name, err)
