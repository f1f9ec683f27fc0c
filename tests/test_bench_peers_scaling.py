"""benchmarks/bench_peers.py without JaxPM, and the arithmetic of benchmarks/scaling_model.py."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)
import scaling_model  # noqa: E402


def test_bench_peers_without_jaxpm_says_so_in_json(tmp_path):
    """A Python where ``jax`` cannot be imported: one JSON document, exit 0."""
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("raise ImportError('jax hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_peers.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["jaxpm_available"] is False
    assert "jax hidden by the test" in doc["reason"] and "[peers]" in doc["reason"]


def test_bench_peers_cosmonet_side_runs_without_jaxpm():
    """The cosmonet half of the comparison (no jax needed): the simulation runs through the
    wrapper that captures the initial state (it must pass on run_fastpm's keywords), and
    the captured state is the 2LPT start at a_start."""
    import bench_peers
    from mpi4py import MPI

    from cosmonet.sim.simulation import SimConfig
    cfg = SimConfig(nc=8, box=32.0, steps=2, seed=3)
    res, captured = bench_peers.cosmonet_run(cfg, MPI.COMM_SELF)
    assert captured["a"] == pytest.approx(cfg.a_start) and captured["steps"] == 2
    assert captured["disp"].shape == (8 ** 3, 3) and "fastpm/disp" in res.fields


INP = {"fft_gflops_per_rank": 4.0, "paint_s_per_particle": 50e-9, "readout_s_per_particle": 100e-9,
       "other_fraction": 0.1, "bytes_per_particle_1rank": 177.0, "bytes_per_particle_nrank": 330.0,
       "baseline_mib": 210.0}
NET = {"bandwidth_Bps": 12.5e9, "latency_s": 2e-6, "intranode_bandwidth_Bps": 20e9,
       "intranode_latency_s": 1e-6, "mean_displacement_mpc_h": 5.0}


def test_one_rank_is_compute_only():
    r = scaling_model.step_model(128, 2.0, 512.0, 1, 1, INP, NET)
    mesh = 256 ** 3
    fft = 5 * mesh * math.log2(mesh) / 4e9
    compute = fft + 128 ** 3 * 150e-9
    assert r["seconds_per_step"] == pytest.approx(1.1 * compute, rel=1e-12)
    assert r["parts_s"]["fft_transposes"] == r["parts_s"]["halos"] == r["parts_s"]["particle_routing"] == 0
    assert r["memory_per_node_gib"] == pytest.approx((210 * 2 ** 20 + 177.0 * 128 ** 3) / 2 ** 30)


def test_more_nodes_divide_compute_and_the_slab_limit_holds():
    a = scaling_model.step_model(1024, 2.0, 4096.0, 8, 64, INP, NET)
    b = scaling_model.step_model(1024, 2.0, 4096.0, 16, 64, INP, NET)
    assert b["parts_s"]["fft"] == pytest.approx(a["parts_s"]["fft"] / 2)
    assert b["parts_s"]["readout"] == pytest.approx(a["parts_s"]["readout"] / 2)
    assert 0 < b["seconds_per_step"] < a["seconds_per_step"]
    # all-to-all bytes of one transform: the complex 2048^3 mesh, 64/512 of it per node, 7/8 off it
    t = a["parts_s"]["fft_transposes"] / 2 - 2e-6 * 511
    assert t == pytest.approx(8.0 * 2048 * 2048 * 1025 * 64 / 512 * (7 / 8) / 12.5e9)
    rows = scaling_model.predict(1024, 2.0, [8, 64, 512], 64, INP, NET, 4.0)
    # at most one plane of the 1024^3 particle lattice (the LPT mesh) per rank
    assert [r["ranks"] for r in rows] == [512, 1024, 1024]
    assert "exceed" not in rows[0].get("note", "")
    assert all(r["feasible_slab"] for r in rows) and "exceed" in rows[1]["note"] and "exceed" in rows[2]["note"]
