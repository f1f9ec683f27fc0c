"""Issue 16, classes 3, 7 and 10: configuration text, a campaign's identity, physics sanity.

Table-driven like tests/test_hostile.py (the same four assertions per case: exit 2, one
``cosmonet: error:`` line naming the problem, inputs unchanged by SHA-256, nothing left
behind; the first case runs the real executable, the others ``cosmonet.cli.main`` in this
process), plus the grid sigma estimate (:mod:`cosmonet.sim.sanity`) against the measured
rms of generated linear fields.
"""
import shutil

import numpy as np
import pytest
import yaml
from mpi4py import MPI

from cli_util import assert_clean_error, describe, file_tree
from test_hostile import TRAIN_YAML, _run, _run_in_process

CAMPAIGN_YAML = """\
n_sims: 2
nc: 8
box: 32.0
steps: 1
seed: 3
shard_size: 1
fields: [za/disp]
splits: {train: 1, test: 1}
"""

HUGE = "x" * (1 << 20)                  # a 1 MiB value
LONG_PATH = "/tmp/" + "p" * 100_000      # a 100k-character path
#: the longest error line a case may print (cosmonet: error: + errors.LINE_CHARS and a margin)
MAX_LINE = 520


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 2-simulation campaign (one shard each), its YAML, a YAML giving a key twice, a copy
    of the campaign whose campaign.yaml gives a key twice, a copy whose campaign.yaml was
    edited (seed 3 -> 4) after its shards were written, and a training YAML."""
    d = tmp_path_factory.mktemp("hostile_config")
    w = {"d": d, "cfg": d / "campaign.yaml", "campaign": d / "campaign", "dup": d / "dup.yaml",
         "dupdir": d / "dupdir", "edited": d / "edited", "train": d / "train.yaml", "file": d / "a_file"}
    w["cfg"].write_text(CAMPAIGN_YAML)
    proc = _run(["simulate", w["cfg"], "--out", w["campaign"], "--quiet"])
    assert proc.returncode == 0, describe(proc)
    w["dup"].write_text(CAMPAIGN_YAML + "nc: 16\n")
    shutil.copytree(w["campaign"], w["dupdir"])
    stored = w["dupdir"] / "campaign.yaml"
    stored.write_text(stored.read_text() + "steps: 2\n")
    shutil.copytree(w["campaign"], w["edited"])
    stored = w["edited"] / "campaign.yaml"
    stored.write_text(stored.read_text().replace("seed: 3", "seed: 4"))
    w["edited_yaml"] = stored
    w["train"].write_text(TRAIN_YAML.format(root=w["campaign"], out=d / "never_written"))
    w["file"].write_text("a file\n")
    return w


# (id, argv with {placeholders}: world paths and {w} = the case's own empty directory, needles)
CASES = [
    # ---- 3: configuration text: a key given twice, in every YAML the program reads
    ("simulate config gives a key twice", ["simulate", "{dup}", "--out", "{w}/c"], ("nc", "given twice", "line 9")),
    ("simulate --set value gives a key twice", ["simulate", "{cfg}", "--set", "splits={{train: 1, train: 1}}",
                                                "--out", "{w}/c"], ("--set splits", "'train' is given twice")),
    ("verify campaign.yaml gives a key twice", ["verify", "{dupdir}"], ("steps", "given twice")),
    ("simulate into a dir whose campaign.yaml gives a key twice", ["simulate", "{cfg}", "--out", "{dupdir}"],
     ("steps", "given twice")),
    ("train data.root campaign.yaml gives a key twice", ["train", "{train}", "--set", "data.root={dupdir}",
                                                         "--set", "out={w}/run"], ("steps", "given twice")),
    ("train config gives a key twice", ["train", "{dup}"], ("given twice",)),
    # ---- 3: a huge value is quoted by a prefix and its length
    ("simulate --set huge value", ["simulate", "{cfg}", "--set", "nc=" + HUGE, "--out", "{w}/c"],
     ("config: nc", "chars)")),
    ("simulate --set huge unparsable value", ["simulate", "{cfg}", "--set", "nc=[" + HUGE, "--out", "{w}/c"],
     ("--set nc", "chars)")),
    ("train --set huge lr", ["train", "{train}", "--set", "train.lr=" + HUGE], ("train.lr",)),
    ("run-sim --out 100k-character path", ["run-sim", "--nc", "8", "--out", LONG_PATH + "/x.h5"], ("--out",)),
    ("run-sim --seed 100k digits", ["run-sim", "--seed", "9" * 100_000, "--out", "{w}/x.h5"], ("--seed",)),
    ("simulate config 100k-character path", ["simulate", LONG_PATH + ".yaml"], ("cannot read config", "chars)")),
    # ---- 3: an error names the option the user passed
    ("run-sim --nc 1", ["run-sim", "--nc", "1", "--out", "{w}/x.h5"], ("--nc must be",)),
    ("run-sim --boost 0.5", ["run-sim", "--boost", "0.5", "--out", "{w}/x.h5"], ("--boost must be",)),
    ("run-sim --a-start after --a-final", ["run-sim", "--a-start", "0.5", "--a-final", "0.4", "--out", "{w}/x.h5"],
     ("--a-start 0.5", "--a-final 0.4")),
    ("run-sim --box nan", ["run-sim", "--box", "nan", "--out", "{w}/x.h5"], ("--box must be",)),
    ("run-sim --cosmology bad", ["run-sim", "--cosmology", "Omega_m=abc", "--out", "{w}/x.h5"],
     ("--cosmology", "Omega_m")),
    ("run-sim --out in a missing dir", ["run-sim", "--out", "{w}/no/x.h5"], ("--out", "does not exist")),
    ("simulate --out is a file", ["simulate", "{cfg}", "--out", "{file}"], ("--out", "not a directory")),
    ("simulate --set nested key", ["simulate", "{cfg}", "--set", "cosmology.lhs.Omega_m=[0.4, 0.2]",
                                   "--out", "{w}/c"], ("cosmology.lhs.Omega_m",)),
    ("simulate --set nc text", ["simulate", "{cfg}", "--set", "nc=ten", "--out", "{w}/c"], ("config: nc",)),
    # ---- 10: a seed's limit is named
    ("run-sim seed 2^64", ["run-sim", "--seed", str(2 ** 64), "--out", "{w}/x.h5"],
     ("--seed must be an integer in [0, 2^63)",)),
    ("run-sim seed 2^63", ["run-sim", "--seed", str(2 ** 63), "--out", "{w}/x.h5"], ("[0, 2^63)",)),
    ("run-sim seed negative", ["run-sim", "--seed", "-1", "--out", "{w}/x.h5"], ("--seed", "[0, 2^63)")),
    ("simulate seed 2^64", ["simulate", "{cfg}", "--set", f"seed={2 ** 64}", "--out", "{w}/c"],
     ("config: seed must be an integer in [0, 2^63)",)),
    ("simulate seed negative", ["simulate", "{cfg}", "--set", "seed=-3", "--out", "{w}/c"], ("seed", "[0, 2^63)")),
    ("simulate lhs_seed 2^64", ["simulate", "{cfg}", "--set", "cosmology={{lhs: {{Omega_m: [0.25, 0.35]}}, "
                                "lhs_seed: " + str(2 ** 64) + "}}", "--out", "{w}/c"], ("cosmology.lhs_seed", "2^63")),
    # ---- 10: a linear field far beyond unity on the grid
    ("run-sim box far too small", ["run-sim", "--nc", "32", "--box", "0.01", "--out", "{w}/x.h5"],
     ("--box 0.01", "rms 12.3", "above 10")),
    ("simulate box far too small", ["simulate", "{cfg}", "--set", "nc=32", "--set", "box=0.01", "--out", "{w}/c"],
     ("config", "rms 12.3", "above 10")),
    # ---- 7: a campaign's identity
    ("simulate resume after campaign.yaml edited", ["simulate", "{edited_yaml}", "--out", "{edited}"],
     ("shard_000000.h5", "seed 3 -> 4", "edited")),
    ("simulate the first config into the edited dir", ["simulate", "{cfg}", "--out", "{edited}"],
     ("another seed", "(4 there, 3 now)")),
    ("simulate into a campaign with other keys", ["simulate", "{cfg}", "--set", "nc=16", "--set", "steps=2",
                                                  "--out", "{campaign}"], ("another nc", "steps")),
]

END_TO_END = {CASES[0][0]}


@pytest.mark.parametrize("name,argv,needles", CASES, ids=[c[0] for c in CASES])
def test_hostile_config_is_refused_cleanly(world, tmp_path, name, argv, needles):
    case = tmp_path / "case"
    case.mkdir()
    paths = {k: str(v) for k, v in world.items()}
    args = [a if len(a) > 10_000 else a.format(w=case, **paths) for a in argv]
    before, before_case = file_tree(world["d"]), file_tree(case)
    proc = _run(args) if name in END_TO_END else _run_in_process(args)
    assert_clean_error(proc, *needles)
    assert len(proc.stderr.strip()) <= MAX_LINE, f"{len(proc.stderr)} characters\n{proc.stderr[:2000]}"
    assert file_tree(world["d"]) == before, f"an input changed\n{describe(proc)}"
    assert file_tree(case) == before_case, f"output left behind: {sorted(file_tree(case))}\n{describe(proc)}"


def test_a_config_that_is_unchanged_resumes(world):
    """The identity check does not refuse the campaign's own directory: a rerun of the same
    config (only a key that may change between runs differs) keeps both shards."""
    proc = _run_in_process(["simulate", world["cfg"], "--out", world["campaign"], "--set", "batch_size=7", "--quiet"])
    assert proc.returncode == 0, describe(proc)
    assert '"already_done": 2' in proc.stdout


# --------------------------------------------------------------------------- the grid sigma
def _measured_rms(nc, box, seed, a):
    from cosmonet.cosmology import Cosmology, growth_for
    from cosmonet.mesh import ParticleMesh
    from cosmonet.sim.linear import linear_density_k
    cosmo = Cosmology.planck15()
    pm = ParticleMesh(nc, box, MPI.COMM_SELF, dtype=np.float64)
    delta = pm.c2r(linear_density_k(pm, seed, cosmo.linear_power)) * growth_for(cosmo).D1(a)
    return float(np.sqrt(np.mean(delta ** 2)))


@pytest.mark.parametrize("nc,box,a", [(64, 100.0, 1.0), (32, 4.0, 0.5), (64, 1000.0, 1.0)])
def test_grid_sigma_is_the_rms_of_the_generated_field(nc, box, a):
    """The estimate from P(k) alone equals the rms of the simulation's own linear field on
    its grid (mean over 3 seeds) to 2%: the variance of one field of 64^3 modes scatters by
    well under 1% around it."""
    from cosmonet.cosmology import Cosmology
    from cosmonet.sim.sanity import grid_sigma
    est = grid_sigma(Cosmology.planck15(), nc, box, a)
    measured = np.mean([_measured_rms(nc, box, seed, a) for seed in (1, 2, 3)])
    assert abs(measured / est - 1) < 0.02, (measured, est)


def test_grid_sigma_integral_agrees_with_the_full_mode_sum():
    """Beyond max|n_i| = 24 the sum is an integral: at nc = 128 it is the sum over all 2
    million modes to 0.1% (and a wrong cube fraction would miss by several percent)."""
    from cosmonet.cosmology import Cosmology
    from cosmonet.sim.sanity import exact_grid_sigma, grid_sigma
    cosmo = Cosmology.planck15()
    for box in (2.0, 100.0):
        est, exact = grid_sigma(cosmo, 128, box), exact_grid_sigma(cosmo, 128, box)
        assert abs(est / exact - 1) < 1e-3, (box, est, exact)


def test_grid_sigma_thresholds_and_the_campaign_check():
    """The shipped set-ups pass silently, a small cell warns with the number, a tiny one is
    refused; a Latin hypercube is judged at its largest sigma8 corner."""
    from cosmonet.campaign.config import validate
    from cosmonet.campaign.sanity import campaign_cosmologies, check_campaign
    from cosmonet.errors import InputError
    base = yaml.safe_load(CAMPAIGN_YAML)
    assert check_campaign(validate(dict(base, nc=32, box=128.0))) is None          # D3M: 1.84
    line = check_campaign(validate(dict(base, nc=8, box=4.0)))
    assert line is not None and "rms 3.58" in line and "warning" in line
    lhs = {"lhs": {"sigma8": [0.6, 1.6], "Omega_m": [0.25, 0.35]}}
    assert len(campaign_cosmologies(lhs)) == 4
    line = check_campaign(validate(dict(base, nc=8, box=16.0, cosmology=lhs)))
    assert line is not None and "sigma8 1.6" in line
    with pytest.raises(InputError, match="above 10"):
        check_campaign(validate(dict(base, nc=64, box=0.05)))
