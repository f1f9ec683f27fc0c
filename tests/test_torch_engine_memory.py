"""Memory of the batched torch engine (cosmonet.torchpm.run_batch) per D3M box.

- torch's CPU allocator (every tensor, FFT copies included; profiler memory events,
  deterministic for a given torch): a pass of two D3M boxes works in at most 8 MB per
  box besides the outputs (measured 6.5 MB; 10.8 MB before issue 18's memory pass), and
  a batch of three in passes of two needs no more working memory than a batch of two;
- the process: ``benchmarks/bench_memory.py --torch-batch 8`` (peak RSS of 8 boxes above a
  1-box warm-up, per box, in passes of one box, the CPU default) stays under 6 MB per box
  (measured 2.4 - 2.6 MB, the outputs being 2.4 MB; 17.4 - 19.3 MB before, 12.5 MB in one
  pass of eight, the goal 10 MB) -- RSS does not depend on the load;
- what the memory layout must not change: the same boxes whatever the chunk (bit for bit
  on D3M boxes, to float32 rounding of batched FFTs on smaller ones), the device-style
  path (state apart from the outputs) equal to the default one, and the in-place periodic
  difference equal to ``torch.roll``'s.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from cosmonet.errors import InputError
from cosmonet.sim.simulation import SimConfig
from cosmonet.torchpm import simulate
from cosmonet.torchpm.gravity import BatchGravity, periodic_difference
from cosmonet.torchpm.batch_mesh import BatchMesh
from cosmonet.torchpm.simulate import FIELDS, run_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D3M = SimConfig(nc=32, box=128.0, steps=10, boost=2)
MB = 1e6


def allocator_peak(fn):
    """(peak bytes held by torch's CPU allocator while ``fn()`` runs, above what it held
    before; fn's result), from the profiler's memory events in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    assert events, "the profiler recorded no allocation"
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak, result


def test_working_memory_per_box_and_not_growing_with_the_batch():
    run_batch(SimConfig(nc=8, box=32.0, steps=1), [0])      # one-off allocations outside the measure
    peak2, out2 = allocator_peak(lambda: run_batch(D3M, [1, 2], chunk=2))
    peak3, out3 = allocator_peak(lambda: run_batch(D3M, [1, 2, 3], chunk=2))
    outputs2 = sum(v.nbytes for v in out2.values())
    outputs3 = sum(v.nbytes for v in out3.values())
    assert outputs2 == 2 * 6 * 3 * 4 * 32 ** 3                   # six float32 vector fields per box
    work2, work3 = peak2 - outputs2, peak3 - outputs3
    assert work2 / 2 <= 8.0 * MB, work2 / 2 / MB
    assert work2 > 2 * 2.0 * MB                                 # it measured the meshes at all
    assert work3 <= work2 + 0.5 * MB, (work3 / MB, work2 / MB)   # per pass, not per batch
    for name in out2:                                           # and the same boxes
        np.testing.assert_array_equal(out3[name][:2], out2[name])


def test_benchmark_peak_rss_per_box():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_memory.py"), "--torch-batch", "8"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["boxes"] == 8 and rep["output_bytes_per_box"] == 6 * 3 * 4 * 32 ** 3
    assert 0 < rep["bytes_per_box_above_warmup"] <= 6.0 * MB, rep
    assert rep["cpu_s_per_box"] > 0 and rep["mpi_engine_cpu_s_per_box"] > 0


def test_results_do_not_depend_on_the_chunk():
    """Passes of any size give the same boxes: bit for bit on D3M boxes (64^3 force mesh,
    checked above), to float32 rounding here, where torch's CPU FFT rounds a batch of
    32^3 transforms differently from single ones (measured: 7.6e-6 Mpc/h at most); the
    same chunk twice gives the same bits."""
    cfg = SimConfig(nc=16, box=128.0, steps=3, boost=2)
    seeds = [5, 6, 7]
    ref = run_batch(cfg, seeds, chunk=3, density_nmesh=16)
    for chunk in (1, 2, None):
        out = run_batch(cfg, seeds, chunk=chunk, density_nmesh=16)
        assert list(out) == list(FIELDS) + ["density"]
        for name in ref:
            scale = np.abs(ref[name]).max()
            np.testing.assert_allclose(out[name], ref[name], rtol=0, atol=2e-6 * scale + 1e-6,
                                       err_msg=f"chunk {chunk}: {name}")
    again = run_batch(cfg, seeds, chunk=3, density_nmesh=16)
    for name in ref:
        np.testing.assert_array_equal(again[name], ref[name], err_msg=name)
    assert np.abs(ref["fastpm/disp"]).max() > 1.0
    with pytest.raises(InputError, match="chunk"):
        run_batch(cfg, seeds, chunk=0)


def test_state_apart_from_the_outputs_equals_state_in_them():
    """The path of a GPU run returning numpy (the outputs on the host, the particle state
    on the device) against the CPU path (the FastPM outputs are the state), on the CPU."""
    cfg = SimConfig(nc=16, box=128.0, steps=3, boost=2)
    seeds = [5, 6]
    ref = run_batch(cfg, seeds, fields=["za/vel", "fastpm/disp", "fastpm/vel"], density_nmesh=8, chunk=2)
    mesh = BatchMesh(cfg.nc, cfg.box, "cpu", torch.float64)
    force_mesh = BatchMesh(cfg.force_nmesh, cfg.box, "cpu", torch.float32)
    nbody = (BatchGravity(force_mesh, cfg.nc ** 3), force_mesh.lattice(cfg.nc))
    out = {name: torch.full_like(torch.from_numpy(v), np.nan) for name, v in ref.items()}
    simulate._run_part(cfg, mesh, nbody, simulate.white_noise_batch(cfg.nc, seeds), True,
                       [cfg.cosmology] * 2, out, False, None)
    for name in ref:
        np.testing.assert_array_equal(out[name].numpy(), ref[name], err_msg=name)


@pytest.mark.parametrize("N", [2, 3, 4, 5, 8])
def test_periodic_difference_is_rolls_bit_for_bit(N):
    g = torch.Generator().manual_seed(N)
    field = torch.randn(2, N, N, N, generator=g)
    out = torch.empty_like(field)
    for dim in (1, 2, 3):
        for shift in (1, 2):
            ref = torch.roll(field, -shift, dim) - torch.roll(field, shift, dim)
            assert torch.equal(periodic_difference(field, dim, shift, out), ref), (dim, shift)
