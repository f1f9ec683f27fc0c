"""A network trained on pairs of several cosmologies records them all.

- ``campaign_training_setup``: the campaign's most common cosmology as ``cosmology`` and
  every distinct one with its count as ``cosmologies``; one cosmology: no list;
- ``emulate``'s warnings then name a parameter only outside the range the training
  cosmologies span (with the range), and a one-cosmology record keeps the old lines;
- the plane-wave probes' set-up from such a campaign uses the same most common cosmology;
- a real (2-step) training run on a two-cosmology campaign writes the record into its
  checkpoint, and ``emulate`` with it warns about an input outside the range.
"""
import json

import numpy as np
import pytest
import yaml

from cosmonet.emulate import outside_training
from cosmonet.train.loop import campaign_training_setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _campaign(root, cosmology, n_sims=4, run=False):
    from mpi4py import MPI

    from cosmonet.campaign.config import validate
    from cosmonet.campaign.runner import prepare_directory, run_campaign
    cfg = validate({"n_sims": n_sims, "nc": 8, "box": 32.0, "steps": 2, "shard_size": 4, "seed": 21,
                    "fields": ["za/disp", "lpt2/disp", "fastpm/disp"], "cosmology": cosmology,
                    "splits": {"train": n_sims}, "out": str(root)})
    prepare_directory(cfg)
    if run:
        run_campaign(cfg, MPI.COMM_SELF, show_progress=False)
    return root


AMPLITUDES = {"base": "planck15", "list": [{"A_s_scale": 0.25}, {}, {}, {"Omega_m": 0.33}]}


def test_the_record_holds_every_cosmology_most_common_first(tmp_path):
    rec = campaign_training_setup(_campaign(tmp_path / "c", AMPLITUDES, n_sims=8))
    assert rec["nc"] == 8 and rec["box"] == 32.0 and rec["steps"] == 2
    assert rec["cosmology"]["sigma8"] == pytest.approx(0.8159) and rec["cosmology"]["Omega_m"] == pytest.approx(0.3089)
    counts = [(c["sigma8"], c["Omega_m"], c["n_sims"]) for c in rec["cosmologies"]]
    assert counts[0] == (pytest.approx(0.8159), pytest.approx(0.3089), 4)         # planck15, 4 of 8
    assert counts[1] == (pytest.approx(0.8159 * 0.5), pytest.approx(0.3089), 2)   # A_s x 0.25: sigma8 x 0.5
    assert counts[2][1:] == (pytest.approx(0.33), 2)
    one = campaign_training_setup(_campaign(tmp_path / "one", "planck15"))
    assert "cosmologies" not in one and one["cosmology"]["sigma8"] == pytest.approx(0.8159)
    assert campaign_training_setup(tmp_path / "nowhere") is None


def test_emulate_warns_only_outside_the_trained_range():
    setup = {"nc": 32, "box": 128.0, "a_final": 1.0, "cosmology": {"Omega_m": 0.3089, "sigma8": 0.8159},
             "cosmologies": [{"Omega_m": 0.3089, "sigma8": 0.8159, "transfer": "eisenstein_hu", "n_sims": 4},
                             {"Omega_m": 0.3089, "sigma8": 0.258, "transfer": "eisenstein_hu", "n_sims": 1},
                             {"Omega_m": 0.33, "sigma8": 0.8159, "transfer": "eisenstein_hu", "n_sims": 1}]}
    base = {"nc": 32, "box_size": 128.0, "a_final": 1.0}
    assert outside_training(setup, dict(base, Omega_m=0.32, sigma8=0.5)) == []          # inside both ranges
    assert outside_training(setup, dict(base, Omega_m=0.3089, sigma8=0.258)) == []      # an edge
    lines = outside_training(setup, dict(base, Omega_m=0.25, sigma8=1.5))
    assert lines == ["Omega_m 0.25, trained on 0.3089 to 0.33", "sigma8 1.5, trained on 0.258 to 0.8159"]
    # one cosmology: the exact value, as before
    single = {k: v for k, v in setup.items() if k != "cosmologies"}
    assert outside_training(single, dict(base, Omega_m=0.32, sigma8=0.8159)) == ["Omega_m 0.32, trained on 0.3089"]


def test_probe_setup_from_such_a_campaign_takes_the_most_common_cosmology(tmp_path):
    from cosmonet.probes.planewave import ProbeSetup
    setup, note = ProbeSetup.from_campaign(_campaign(tmp_path / "c", AMPLITUDES, n_sims=8))
    assert setup.cosmology.to_dict()["sigma8"] == pytest.approx(0.8159)     # simulation 0 is A_s x 0.25
    assert "3 cosmologies" in note and "most common one (4 of 8 simulations)" in note


def test_training_on_two_cosmologies_records_them_in_the_checkpoint(tmp_path, capsys):
    from cosmonet.cli import main
    from cosmonet.train.checkpoint import load_checkpoint, resolve_checkpoint
    pairs = _campaign(tmp_path / "pairs", {"base": "planck15", "list": [{}, {"A_s_scale": 0.5}, {}]},
                      n_sims=6, run=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "base_channels": 4, "depth": 1, "norm": "group", "lpt2_prior": -0.65},
        "data": {"root": str(pairs), "scale": 4.0, "num_workers": 0, "val_split": ""},
        "train": {"batch_size": 2, "max_steps": 2, "log_every": 1, "precision": "fp32"},
        "out": str(tmp_path / "run")}))
    assert main(["train", str(cfg)]) == 0
    state = load_checkpoint(resolve_checkpoint(str(tmp_path / "run")))
    rec = state["training_setup"]
    assert [c["n_sims"] for c in rec["cosmologies"]] == [4, 2]
    assert rec["cosmology"]["sigma8"] == pytest.approx(0.8159)
    capsys.readouterr()
    # emulate with it: sigma8 0.3 lies below the trained 0.577 .. 0.8159
    sim, emu = tmp_path / "sim.h5", tmp_path / "emu.h5"
    assert main(["run-sim", "--nc", "8", "--box", "32", "--steps", "2", "--seed", "4",
                 "--cosmology", "sigma8=0.3", "--out", str(sim)]) == 0
    capsys.readouterr()
    assert main(["emulate", "--checkpoint", str(tmp_path / "run"), "--input", str(sim), "--out", str(emu)]) == 0
    err = capsys.readouterr().err
    lo = 0.8159 * np.sqrt(0.5)
    assert f"sigma8 0.3, trained on {lo:g} to 0.8159" in err, err
    json.dumps(rec)                                                      # plain data
