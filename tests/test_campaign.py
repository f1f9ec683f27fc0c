"""``cosmonet simulate`` / ``cosmonet verify`` campaigns, run as subprocesses (mostly under mpirun).

- bad input: exit 2, one ``cosmonet: error:`` line naming the field, no traceback, nothing
  created in the output location;
- the same configuration on 1 rank, 2 ranks and 4 ranks (``ranks_per_sim`` 2) writes the
  same shards;
- a run killed with SIGKILL is resumed by running the same command again;
- a corrupted shard is reported by ``verify`` and regenerated (identically) by a rerun.

Process start-up (numpy, mpi4py, h5py, pyccl) dominates these tiny runs: the independent
bad-input commands are started together by module-scoped fixtures.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from mpi_util import cosmonet_exe, mpi_env, mpirun

from cosmonet.campaign.config import load_config
from cosmonet.campaign.plan import plan
from cli_util import assert_clean_error as _assert_clean_error  # noqa: E402
from cli_util import describe as _describe  # noqa: E402

SMALL = dict(
    n_sims=6, nc=8, box=64.0, steps=2, boost=2, seed=7, shard_size=2,
    cosmology={"lhs": {"Omega_m": [0.25, 0.35], "sigma8": [0.7, 0.9]}, "lhs_seed": 3},
    fields=["za/disp", "lpt2/vel", "fastpm/disp", "fastpm/vel", "density"], density_nmesh=4,
    splits={"train": 4, "val": 1, "test": 1},
)
PARAMS = ("index", "seed", "split", "Omega_m", "Omega_b", "h", "n_s", "sigma8", "A_s")


# --------------------------------------------------------------------------- helpers
def _env():
    env = mpi_env()
    env["OMP_NUM_THREADS"] = "1"
    return env


def _write_config(path, **kw):
    raw = dict(SMALL)
    raw.update(kw)
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))
    return Path(path)


def _cli(args, timeout=300):
    """One ``cosmonet`` process (a single MPI rank, no mpirun)."""
    return subprocess.run([cosmonet_exe()] + [str(a) for a in args], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _cli_all(jobs):
    """Run ``{name: args}`` concurrently; returns ``{name: CompletedProcess}``."""
    with ThreadPoolExecutor(max_workers=max(2, min(len(jobs), 2 * (os.cpu_count() or 2)))) as pool:
        futures = {name: pool.submit(_cli, args) for name, args in jobs.items()}
        return {name: fut.result() for name, fut in futures.items()}




def _summary(proc):
    """The JSON summary: the last line on stdout."""
    lines = proc.stdout.strip().splitlines()
    assert lines, _describe(proc)
    return json.loads(lines[-1])




def _snapshot(root):
    """{relative path: (size, mtime_ns)} of the files under ``root`` (hidden ones included);
    directories as {path: None} (their mtime changes when a probe file comes and goes)."""
    root = Path(root)
    if not root.exists():
        return None
    out = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        out[str(p.relative_to(root))] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def _shard(root, s):
    return Path(root) / "shards" / f"shard_{s:06d}.h5"


def _load_shard(path):
    """Every dataset of a shard file: {name: array}."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset)
                     else None)
    return out


def _assert_same_shard(a, b, box, what=""):
    """Fields to 1e-5 of the box (velocities and density: of their maximum); params exactly."""
    assert sorted(a) == sorted(b), what
    for name in a:
        x, y = a[name], b[name]
        assert x.shape == y.shape and x.dtype == y.dtype, (what, name, x.shape, y.shape)
        if name.startswith("params/"):
            if x.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=f"{what} {name}")    # NaN == NaN here
            else:
                assert np.array_equal(x, y), (what, name, x, y)
            continue
        scale = box if name.endswith("/disp") else float(np.abs(x).max())
        assert scale > 0, (what, name)
        err = float(np.abs(x.astype(np.float64) - y).max()) / scale
        assert err < 1e-5, (what, name, err)


def _indices(root):
    idx = []
    for path in sorted(glob.glob(os.path.join(root, "shards", "shard_*.h5"))):
        with h5py.File(path, "r") as f:
            idx.extend(int(i) for i in f["params/index"][...])
    return idx


def _tmp_files(root):
    return sorted(str(p) for p in Path(root).rglob("*.tmp"))


# --------------------------------------------------------------------------- the reference runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The SMALL campaign on 1 rank, 2 ranks and 4 ranks (ranks_per_sim 2)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = _write_config(root / "small.yaml", out=str(root / "default_out"))
    out = {n: root / f"r{n}" for n in (1, 2, 4)}
    procs = {1: _cli(["simulate", cfg, "--out", out[1], "--quiet"])}
    assert procs[1].returncode == 0, _describe(procs[1])
    procs[2] = mpirun(2, [cosmonet_exe(), "simulate", cfg, "--out", out[2], "--quiet"])
    procs[4] = mpirun(4, [cosmonet_exe(), "simulate", cfg, "--out", out[4], "--quiet",
                          "--set", "ranks_per_sim=2"])
    return {"config": cfg, "out": out, "procs": procs, "summary": {n: _summary(p) for n, p in procs.items()}}


@pytest.mark.mpi
def test_campaign_layout_and_summary(runs):
    out, n_sims = runs["out"][1], SMALL["n_sims"]
    assert not (runs["config"].parent / "default_out").exists(), "--out was not used"
    for n in (1, 2, 4):
        s = runs["summary"][n]
        assert s["n_sims"] == n_sims and s["simulated_this_run"] == n_sims and s["already_done"] == 0, s
        assert s["ranks"] == n and s["ranks_per_sim"] == (2 if n == 4 else 1), s
        assert "Traceback" not in runs["procs"][n].stderr
    assert (out / "campaign.yaml").is_file() and (out / "manifest.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_sims"] == n_sims and manifest["n_shards"] == 3
    assert [r["indices"] for r in manifest["shards"]] == [[0, 2], [2, 4], [4, 6]]
    nc, m = SMALL["nc"], SMALL["density_nmesh"]
    for s in range(3):
        record = json.loads((out / "shards" / f"shard_{s:06d}.json").read_text())
        assert record == manifest["shards"][s]
        assert record["bytes"] == _shard(out, s).stat().st_size
        data = _load_shard(_shard(out, s))
        for name in SMALL["fields"]:
            shape = (2, 1, m, m, m) if name == "density" else (2, 3, nc, nc, nc)
            assert data[name].shape == shape and data[name].dtype == np.float32, name
            assert np.all(np.isfinite(data[name])), name
        assert set(k for k in data if not k.startswith("params/")) == set(SMALL["fields"])
        assert data["params/index"].tolist() == [2 * s, 2 * s + 1]
    # mean density contrast vanishes; displacements are not all zero
    d = _load_shard(_shard(out, 0))
    assert abs(float(d["density"].mean())) < 1e-4
    assert float(np.abs(d["fastpm/disp"]).max()) > 0.1
    assert _tmp_files(out) == []
    for proc in _cli_all({n: ["verify", runs["out"][n]] for n in (1, 2, 4)}).values():
        assert proc.returncode == 0, _describe(proc)
        assert json.loads(proc.stdout)["ok"] is True


@pytest.mark.mpi
def test_params_table_is_the_plan(runs):
    """The params of the shards are the plan of the config (seeds, cosmologies, splits)."""
    cfg = load_config(str(runs["config"]))
    specs = plan(cfg)
    table = {k: [] for k in PARAMS}
    for s in range(cfg.n_shards):
        data = _load_shard(_shard(runs["out"][1], s))
        for k in PARAMS:
            table[k].extend(data[f"params/{k}"].tolist())
    assert table["index"] == list(range(cfg.n_sims))
    assert table["seed"] == [sp.seed for sp in specs]
    assert [b.decode() for b in table["split"]] == ["train"] * 4 + ["val", "test"]
    for k in ("Omega_m", "Omega_b", "h", "n_s", "sigma8"):
        assert table[k] == [getattr(sp.cosmology, k) for sp in specs], k
    assert all(np.isnan(table["A_s"]))
    assert len(set(table["Omega_m"])) == cfg.n_sims       # an lhs: every simulation differs
    assert len(set(table["seed"])) == cfg.n_sims


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 4])
def test_same_shards_on_1_2_4_ranks(runs, n):
    for s in range(3):
        ref, got = _load_shard(_shard(runs["out"][1], s)), _load_shard(_shard(runs["out"][n], s))
        _assert_same_shard(ref, got, SMALL["box"], what=f"{n} ranks, shard {s}")


@pytest.mark.mpi
def test_rerun_of_a_complete_campaign_changes_nothing(runs):
    """The campaign of 2 ranks, rerun on 1: all done, no shard rewritten."""
    out = runs["out"][2]
    before = {s: _shard(out, s).stat().st_mtime_ns for s in range(3)}
    proc = _cli(["simulate", runs["config"], "--out", out, "--quiet"])
    assert proc.returncode == 0, _describe(proc)
    s = _summary(proc)
    assert s["already_done"] == SMALL["n_sims"] and s["simulated_this_run"] == 0, s
    assert {k: _shard(out, k).stat().st_mtime_ns for k in range(3)} == before


@pytest.mark.mpi
def test_out_holding_another_campaign_is_refused(runs):
    out = runs["out"][2]
    before = _snapshot(out)
    procs = _cli_all({
        "n_sims": ["simulate", runs["config"], "--out", out, "--set", "n_sims=8", "--set", "splits.train=6"],
        "cosmology": ["simulate", runs["config"], "--out", out, "--set", "cosmology.lhs_seed=4"],
        "fields": ["simulate", runs["config"], "--out", out, "--set", "fields=[za/disp]"],
    })
    for key, proc in procs.items():
        _assert_clean_error(proc, key, str(out))
    assert _snapshot(out) == before


# --------------------------------------------------------------------------- bad input
def _bad_case(case, d):
    """Set up one bad-input case in ``d``; returns (args, needles, output location)."""
    out = d / "out"
    cfg = d / "c.yaml"
    if case == "unknown_key":
        return ["simulate", _write_config(cfg, colour="red"), "--out", out], ["colour"], out
    if case == "n_sims_string":
        return ["simulate", _write_config(cfg, n_sims="ten"), "--out", out], ["n_sims", "ten"], out
    if case == "nc_float":
        return ["simulate", _write_config(cfg, nc=3.5), "--out", out], ["nc", "3.5"], out
    if case == "box_string":
        return ["simulate", _write_config(cfg, box="big"), "--out", out], ["box", "big"], out
    if case == "lhs_min_above_max":
        cosmo = {"lhs": {"Omega_m": [0.35, 0.25], "sigma8": [0.7, 0.9]}}
        return (["simulate", _write_config(cfg, cosmology=cosmo), "--out", out],
                ["cosmology.lhs.Omega_m"], out)
    if case == "field_unknown":
        return (["simulate", _write_config(cfg, fields=["za/disp", "pmwd/disp"]), "--out", out],
                ["fields", "pmwd/disp"], out)
    if case == "splits_sum":
        return (["simulate", _write_config(cfg, splits={"train": 4, "test": 1}), "--out", out],
                ["splits"], out)
    if case == "list_entry_unknown_key":
        cosmo = {"list": ["planck15", {"Omegam": 0.3}]}
        return ["simulate", _write_config(cfg, cosmology=cosmo), "--out", out], ["Omegam"], out
    if case == "set_unknown_key":
        return ["simulate", _write_config(cfg), "--out", out, "--set", "colour=red"], ["colour"], out
    if case == "set_wrong_type":
        return ["simulate", _write_config(cfg), "--out", out, "--set", "nc=3.5"], ["nc"], out
    if case == "set_no_equals":
        return ["simulate", _write_config(cfg), "--out", out, "--set", "nc"], ["nc"], out
    if case == "set_out_in_config":
        # out from the config (relative to the cwd of the test: use an absolute path)
        return ["simulate", _write_config(cfg, out=str(out)), "--set", "nc=eight"], ["nc"], out
    if case == "config_missing":
        return ["simulate", d / "nope.yaml", "--out", out], ["nope.yaml"], out
    if case == "config_not_yaml":
        cfg.write_text("n_sims: 4\nnc: [8\n")
        return ["simulate", cfg, "--out", out], ["c.yaml"], out
    if case == "out_under_proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc")
        proc_out = Path("/proc/cosmonet-campaign-test")
        assert not proc_out.exists()
        return ["simulate", _write_config(cfg), "--out", proc_out], ["out", str(proc_out)], proc_out
    if case == "out_parent_is_file":
        (d / "plain").write_text("not a directory\n")
        return (["simulate", _write_config(cfg), "--out", d / "plain" / "campaign"],
                ["out", "plain"], d / "plain" / "campaign")
    if case == "out_is_file":
        (d / "plain").write_text("not a directory\n")
        return ["simulate", _write_config(cfg), "--out", d / "plain"], ["out", "plain"], None
    # the two below fail after the configuration was read: still nothing may be created
    if case == "ranks_per_sim_not_dividing":
        return (["simulate", _write_config(cfg, ranks_per_sim=2), "--out", out], ["ranks_per_sim"], out)
    if case == "lhs_seed_string":
        cosmo = {"lhs": {"Omega_m": [0.25, 0.35]}, "lhs_seed": "abc"}
        return ["simulate", _write_config(cfg, cosmology=cosmo), "--out", out], ["lhs_seed"], out
    raise AssertionError(case)


BAD = ["unknown_key", "n_sims_string", "nc_float", "box_string", "lhs_min_above_max", "field_unknown",
       "splits_sum", "list_entry_unknown_key", "set_unknown_key", "set_wrong_type", "set_no_equals",
       "set_out_in_config", "config_missing", "config_not_yaml", "out_under_proc", "out_parent_is_file",
       "out_is_file", "ranks_per_sim_not_dividing", "lhs_seed_string"]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    prepared, skipped = {}, {}
    for case in BAD:
        d = root / case
        d.mkdir()
        try:
            args, needles, out = _bad_case(case, d)
        except pytest.skip.Exception as exc:
            skipped[case] = str(exc)
            continue
        prepared[case] = (args, needles, out, d, _snapshot(d))
    procs = _cli_all({case: p[0] for case, p in prepared.items()})
    return {case: (procs[case],) + prepared[case][1:] for case in prepared}, skipped


@pytest.mark.parametrize("case", BAD)
def test_simulate_bad_input(bad_runs, case):
    results, skipped = bad_runs
    if case in skipped:
        pytest.skip(skipped[case])
    proc, needles, out, d, before = results[case]
    _assert_clean_error(proc, *needles)
    if out is not None:
        assert not os.path.lexists(out), f"{out} was created\n{_describe(proc)}"
    assert _snapshot(d) == before, f"files created or changed in {d}\n{_describe(proc)}"


# --------------------------------------------------------------------------- verify: not a campaign
@pytest.fixture(scope="module")
def verify_runs(tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("verify")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("hello\n")
    (root / "empty_yaml").mkdir()
    (root / "empty_yaml" / "campaign.yaml").write_text("")
    (root / "list_yaml").mkdir()
    (root / "list_yaml" / "campaign.yaml").write_text("- 1\n- 2\n")
    (root / "no_shards").mkdir()
    shutil.copy(runs["out"][1] / "campaign.yaml", root / "no_shards" / "campaign.yaml")
    jobs = {name: ["verify", root / name] for name in ("empty", "missing", "file.txt", "empty_yaml",
                                                        "list_yaml", "no_shards")}
    return root, _cli_all(jobs)


@pytest.mark.parametrize("name", ["empty", "missing", "file.txt", "empty_yaml", "list_yaml"])
def test_verify_not_a_campaign(verify_runs, name):
    root, procs = verify_runs
    _assert_clean_error(procs[name], name)


def test_verify_campaign_without_shards_directory(verify_runs):
    """campaign.yaml but no shards/ (e.g. deleted): a report or one error line, not a crash."""
    root, procs = verify_runs
    proc = procs["no_shards"]
    assert "Traceback" not in proc.stderr, _describe(proc)
    assert proc.returncode in (1, 2), _describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1, _describe(proc)


# --------------------------------------------------------------------------- corruption
@pytest.mark.mpi
def test_corrupt_shard_is_reported_and_regenerated(runs, tmp_path):
    out = tmp_path / "campaign"
    shutil.copytree(runs["out"][1], out)
    shard = _shard(out, 1)
    original = _load_shard(shard)
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:                    # flip 16 bytes in the middle of the file
        fh.seek(size // 2)
        block = fh.read(16)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))
    untouched = {s: (_shard(out, s).stat().st_mtime_ns, _shard(out, s).read_bytes()) for s in (0, 2)}

    proc = _cli(["verify", out])
    assert proc.returncode == 1, _describe(proc)
    assert "Traceback" not in proc.stderr, _describe(proc)
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["corrupt"] == [1] and report["missing"] == [], report
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "1" in lines[0], _describe(proc)

    proc = mpirun(2, [cosmonet_exe(), "simulate", runs["config"], "--out", out, "--quiet"])
    s = _summary(proc)
    assert s["already_done"] == 4 and s["simulated_this_run"] == 2, s
    for k, (mtime, data) in untouched.items():
        assert _shard(out, k).stat().st_mtime_ns == mtime, f"shard {k} was rewritten"
        assert _shard(out, k).read_bytes() == data

    proc = _cli(["verify", out])
    assert proc.returncode == 0, _describe(proc)
    assert json.loads(proc.stdout)["ok"] is True
    _assert_same_shard(original, _load_shard(shard), SMALL["box"], what="regenerated shard 1")
    assert _tmp_files(out) == []


# --------------------------------------------------------------------------- stale temporaries
def test_rerun_removes_temporaries_of_a_killed_run(runs, tmp_path):
    """A run killed while writing leaves ``*.tmp`` files (atomic writes of shards, records and
    the manifest); the next run of the campaign must not leave any of them behind."""
    out = tmp_path / "campaign"
    shutil.copytree(runs["out"][1], out)
    # as a kill would leave them: shard 2 lost its record, and temporaries of all three kinds
    (out / "shards" / "shard_000002.json").unlink()
    stale = [out / "shards" / "shard_000002.h5.k3j4h5.tmp", out / "shards" / "shard_000002.json.a8f2c1.tmp",
             out / "manifest.json.x1y2z3.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    proc = _cli(["simulate", runs["config"], "--out", out, "--quiet"])
    assert proc.returncode == 0, _describe(proc)
    s = _summary(proc)
    assert s["already_done"] == 4 and s["simulated_this_run"] == 2, s
    assert _cli(["verify", out]).returncode == 0
    assert _tmp_files(out) == [], "temporaries left behind"


# --------------------------------------------------------------------------- kill and resume
def _session_pids(sid):
    """Live (non-zombie) processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            pids.append(pid)
    return pids


def _kill_session(proc):
    """SIGKILL mpirun's process group, then every survivor of its session (the ranks)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while True:
        alive = _session_pids(proc.pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes {alive} survive SIGKILL"
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@pytest.mark.mpi
def test_kill_and_resume(tmp_path):
    n_sims, shard_size = 40, 2
    n_shards = n_sims // shard_size
    cfg = _write_config(tmp_path / "big.yaml", n_sims=n_sims, nc=16, steps=5, shard_size=shard_size,
                        fields=["fastpm/disp", "density"], density_nmesh=8, splits={},
                        out=str(tmp_path / "campaign"))
    out = tmp_path / "campaign"
    args = [cosmonet_exe(), "simulate", cfg, "--quiet"]
    cmd = [shutil.which("mpirun"), "-np", "2", "--oversubscribe"] + [str(a) for a in args]
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen(cmd, env=_env(), stdout=so, stderr=se, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not glob.glob(str(out / "shards" / "shard_*.json")):
            assert proc.poll() is None, ("the run ended before writing a shard record:\n"
                                         + (tmp_path / "stderr").read_text())
            assert time.monotonic() < deadline, "no shard record after 240 s"
            time.sleep(0.01)
    finally:
        _kill_session(proc)
    records = sorted(glob.glob(str(out / "shards" / "shard_*.json")))
    assert 0 < len(records) < n_shards, f"{len(records)} records: the run was not interrupted"
    assert not (out / "manifest.json").exists()
    done_before = {int(Path(r).stem.split("_")[1]) for r in records}
    mtimes = {s: _shard(out, s).stat().st_mtime_ns for s in done_before}

    proc = _cli(["verify", out])
    assert proc.returncode != 0, _describe(proc)
    assert "Traceback" not in proc.stderr, _describe(proc)
    assert json.loads(proc.stdout)["ok"] is False

    proc = mpirun(2, args)
    s = _summary(proc)
    assert s["already_done"] > 0, s
    assert s["already_done"] == shard_size * len(done_before), (s, sorted(done_before))
    assert s["already_done"] + s["simulated_this_run"] == n_sims, s
    for k, mtime in mtimes.items():
        assert _shard(out, k).stat().st_mtime_ns == mtime, f"complete shard {k} was rewritten"

    proc = _cli(["verify", out])
    assert proc.returncode == 0, _describe(proc)
    assert json.loads(proc.stdout)["ok"] is True
    assert sorted(_indices(out)) == list(range(n_sims))          # each index exactly once
    assert len(glob.glob(str(out / "shards" / "shard_*.h5"))) == n_shards
    assert _tmp_files(out) == [], "temporaries left behind"
