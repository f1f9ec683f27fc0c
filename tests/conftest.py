"""Shared fixtures. ``tiny_pairs``: a 12-simulation campaign of 8^3 ZA/2LPT/FastPM pairs
(splits 8/2/2) that the training tests read (never write). ``trained_d3m``: one small D3M
emulator trained once per session.

configs/d3m_small.yaml (U-Net, 16 base channels, depth 2), shortened to fit the suite:
288 pairs of 32^3 particles in 128 Mpc/h (256 training, 32 held out, no validation
split), 6 epochs instead of 8, about 4.5 minutes on 2 cores. ``tests/test_learning.py`` checks that it beats 2LPT;
``tests/test_probes.py`` runs every probe on it. Only slow tests use it.
"""
import json
import os
import subprocess
from types import SimpleNamespace

import pytest

from mpi_util import cosmonet_exe, mpi_env, mpirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: small convolutions on a shared 2-core machine run
    faster (and far steadier) on one thread than with OpenMP threads competing with other
    processes. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """The directory of a tiny campaign: 12 pairs of 8^3 particles in 32 Mpc/h, 2 steps,
    shards of 4, splits train 8 / val 2 / test 2. Read-only for the tests that use it."""
    from mpi4py import MPI

    from cosmonet.campaign.config import validate
    from cosmonet.campaign.runner import prepare_directory, run_campaign
    root = tmp_path_factory.mktemp("pairs")
    cfg = validate({"n_sims": 12, "nc": 8, "box": 32.0, "steps": 2, "shard_size": 4, "seed": 3,
                    "fields": ["za/disp", "lpt2/disp", "fastpm/disp"],
                    "splits": {"train": 8, "val": 2, "test": 2}, "out": str(root)})
    prepare_directory(cfg)
    run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    return root


@pytest.fixture(scope="session")
def trained_d3m(tmp_path_factory):
    """SimpleNamespace(checkpoint, pairs, run, config, sets, summary): ``sets`` are the
    ``--set`` overrides that point the training config at this run's pairs and output."""
    tmp = tmp_path_factory.mktemp("trained_d3m")
    pairs, run = tmp / "pairs", tmp / "run"
    mpirun(2, [cosmonet_exe(), "simulate", os.path.join(ROOT, "configs", "d3m_pairs.yaml"), "--out", pairs,
               "--quiet", "--set", "n_sims=288", "--set", "shard_size=32",
               "--set", "splits={train: 256, val: 0, test: 32}"], timeout=600)
    cfg = os.path.join(ROOT, "configs", "d3m_small.yaml")
    sets = ["--set", f"data.root={pairs}", "--set", f"out={run}", "--set", "data.val_split=",
            "--set", "train.log_every=32", "--set", "train.epochs=6"]
    proc = subprocess.run([cosmonet_exe(), "train", cfg] + sets, capture_output=True, text=True,
                          env=mpi_env(), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return SimpleNamespace(checkpoint=summary["checkpoint"], pairs=pairs, run=run, config=cfg, sets=sets,
                           summary=summary)
