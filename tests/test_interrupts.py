"""Interrupts, the campaign lock, resume safety and what ``verify`` checks (issue 12, items 6-9).

A run is stopped at a known moment by freezing it (SIGSTOP) once it has made some progress,
sending SIGINT or SIGTERM, and letting it go on (SIGCONT): the handler then runs at once, so
the stop falls a step or two after the progress seen, never after the end. Sizes are tiny
(8^3 particles, a U-Net of 2 channels).
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from cli_util import describe
from mpi_util import cosmonet_exe, mpi_env

CAMPAIGN = {"n_sims": 8, "nc": 8, "box": 32.0, "steps": 1, "seed": 3, "shard_size": 4,
            "fields": ["za/disp", "lpt2/disp", "fastpm/disp"], "splits": {"train": 6, "val": 0, "test": 2}}
TRAIN = {"model": {"name": "unet", "base_channels": 2, "depth": 1, "norm": "group"},
         "data": {"val_split": "", "scale": 4.0, "num_workers": 0},
         "train": {"batch_size": 2, "base_batch": 2, "epochs": 20, "max_steps": 40, "log_every": 1,
                   "checkpoint_every": 100, "seed": 5}}


def _run(args, timeout=180):
    return subprocess.run([cosmonet_exe()] + [str(a) for a in args], capture_output=True, text=True,
                          env=mpi_env(), timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, describe(proc)
    return proc


def _stopped_line(proc, *needles):
    """The one ``cosmonet: stopped:`` line of a stopped command (no traceback, nothing else)."""
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cosmonet:")]
    assert len(lines) == 1 and lines[0].startswith("cosmonet: stopped: "), describe(proc)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in the line\n{describe(proc)}"
    return lines[0]


def _interrupt(cmd, ready, sig, read_stderr=False, timeout=120):
    """Start ``cmd``, wait until ``ready(stderr lines so far)`` holds (stderr is read only
    with ``read_stderr``), then freeze it, send ``sig``, let it go on, and return the
    finished CompletedProcess."""
    proc = subprocess.Popen([str(c) for c in cmd], env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    err = []
    t0 = time.time()
    while not ready(err):
        assert proc.poll() is None, "finished before it could be interrupted:\n" + "".join(err)
        assert time.time() - t0 < timeout
        if read_stderr:
            err.append(proc.stderr.readline())
        else:
            time.sleep(0.02)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    out, rest = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(err) + rest)


def _shards_done(root, n):
    def ready(_):
        return len(glob.glob(os.path.join(root, "shards", "shard_*.json"))) >= n
    return ready


def _verify(root):
    proc = _run(["verify", root])
    return proc, json.loads(proc.stdout.strip().splitlines()[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A campaign config (and one of 16 simulations in shards of 2 for the kill tests), the
    campaign, a campaign of another seed, a training config and an uninterrupted run of 40 steps."""
    d = tmp_path_factory.mktemp("interrupts")
    cfg = d / "campaign.yaml"
    cfg.write_text(yaml.safe_dump(dict(CAMPAIGN, out="unused")))
    many = d / "many.yaml"
    many.write_text(yaml.safe_dump(dict(CAMPAIGN, n_sims=16, shard_size=2, splits={}, out="unused")))
    _ok(_run(["simulate", cfg, "--out", d / "camp", "--quiet"]))
    _ok(_run(["simulate", cfg, "--out", d / "other", "--quiet", "--set", "seed=4"]))
    train = d / "train.yaml"
    train.write_text(yaml.safe_dump(dict(TRAIN, data=dict(TRAIN["data"], root=str(d / "camp")), out=str(d / "ref"))))
    _ok(_run(["train", train]))
    return {"d": d, "cfg": cfg, "many": many, "camp": d / "camp", "other": d / "other", "train": train,
            "ref": d / "ref"}


def _final(out):
    from cosmonet.train.checkpoint import latest_checkpoint
    return torch.load(latest_checkpoint(str(out)), map_location="cpu", weights_only=True)


def _same_params(a, b, atol=1e-7):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < atol, worst


# --------------------------------------------------------------------------- simulate
@pytest.mark.parametrize("sig,code,engine", [(signal.SIGTERM, 143, "mpi"), (signal.SIGINT, 130, "torch")],
                         ids=["SIGTERM-mpi", "SIGINT-torch"])
def test_simulate_stops_on_a_signal_and_the_rerun_resumes(world, tmp_path, sig, code, engine):
    out = tmp_path / "c"
    many = tmp_path / "many.yaml"
    many.write_text(world["many"].read_text() + (f"engine: {engine}\ndevice: cpu\n" if engine == "torch" else ""))
    cmd = [cosmonet_exe(), "simulate", many, "--out", out, "--quiet"]
    proc = _interrupt(cmd, _shards_done(out, 2), sig)
    assert proc.returncode == code, describe(proc)
    line = _stopped_line(proc, signal.Signals(sig).name, "complete shards", "rerun the same command")
    assert proc.stdout.strip() == ""
    assert not glob.glob(str(out / "**" / "*.tmp"), recursive=True)       # the partial shard is gone
    assert (out / ".lock").read_text() == ""                              # released
    _, report = _verify(out)
    kept = report["present"]
    assert 4 <= kept < 16 and f"{kept} of 16 simulations kept" in line
    assert report["corrupt"] == [] and report["foreign"] == [] and len(report["missing"]) == 8 - kept // 2
    rerun = _ok(_run(["simulate", many, "--out", out, "--quiet"]))
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["already_done"] == kept and summary["simulated_this_run"] == 16 - kept
    vproc, report = _verify(out)
    assert vproc.returncode == 0 and report["ok"], describe(vproc)


@pytest.mark.mpi
def test_simulate_under_mpirun_stops_every_rank(world, tmp_path):
    """SIGTERM to mpirun: it passes SIGTERM to both ranks, which stop together at their next
    simulation boundary (no rank hangs); mpirun's own exit code is not 0."""
    out = tmp_path / "c"
    many = tmp_path / "many.yaml"
    many.write_text(world["many"].read_text().replace("n_sims: 16", "n_sims: 400"))
    cmd = [shutil.which("mpirun"), "-np", "2", "--oversubscribe", cosmonet_exe(), "simulate", many, "--out", out,
           "--quiet"]
    proc = subprocess.Popen([str(c) for c in cmd], env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    while len(glob.glob(str(out / "shards" / "*.json"))) < 2:
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert proc.returncode != 0, describe(done)
    _stopped_line(done, "SIGTERM", "rerun the same command")
    _, report = _verify(out)
    assert 0 < report["present"] < 400 and report["corrupt"] == [] and report["foreign"] == []
    assert not glob.glob(str(out / "**" / "*.tmp"), recursive=True)


def test_a_locked_campaign_is_refused_with_the_holder(world, tmp_path):
    """A directory locked by another writer (this process): a second simulate is refused with
    host and pid and touches nothing (the writer's temporary file stays); once released the
    run goes on and removes it."""
    from cosmonet.campaign.lock import CampaignLock
    out = tmp_path / "c"
    shutil.copytree(world["camp"], out)
    for name in ("shard_000001.h5", "shard_000001.json"):
        os.unlink(out / "shards" / name)
    tmp = out / "shards" / "shard_000001.h5.abcd.tmp"
    tmp.write_bytes(b"the first writer's shard in progress")
    with CampaignLock(out):
        before = sorted(os.listdir(out / "shards"))
        proc = _run(["simulate", world["cfg"], "--out", out, "--quiet"])
        assert proc.returncode == 2, describe(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "being written by another cosmonet simulate" in lines[0], describe(proc)
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in lines[0]
        assert sorted(os.listdir(out / "shards")) == before and tmp.exists()
    _ok(_run(["simulate", world["cfg"], "--out", out, "--quiet"]))
    assert not tmp.exists() and _verify(out)[1]["ok"]


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    """kill -9 of the holder: the kernel releases the flock, the next writer takes it."""
    from cosmonet.campaign.lock import CampaignLock
    code = ("import sys, time; from cosmonet.campaign.lock import CampaignLock; "
            f"CampaignLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=mpi_env())
    assert holder.stdout.readline().strip() == "held"
    from cosmonet.errors import InputError
    with pytest.raises(InputError, match=f"pid {holder.pid}"):
        CampaignLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = CampaignLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text().split() == [socket.gethostname(), str(os.getpid())]
    lock.release()


# --------------------------------------------------------------------------- verify
def _copy(world, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(world["camp"], out)
    return out


def _failed(out, needle):
    proc, report = _verify(out)
    assert proc.returncode == 1 and not report["ok"], describe(proc)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in proc.stderr, describe(proc)
    return report


def test_verify_refuses_a_shard_of_another_campaign(world, tmp_path):
    out = _copy(world, tmp_path)
    for name in ("shard_000001.h5", "shard_000001.json"):          # another seed, same shape, its own record
        shutil.copy(world["other"] / "shards" / name, out / "shards" / name)
    report = _failed(out, "shard 1 was written by another campaign (seed differs")
    assert report["foreign"] == [1] and report["corrupt"] == [] and report["present"] == 4


def test_verify_compares_the_manifest_hash(world, tmp_path):
    out = _copy(world, tmp_path)
    doc = json.loads((out / "manifest.json").read_text())
    doc["shards"][0]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(doc))
    report = _failed(out, "shard 0: its SHA-256 is not the one in manifest.json")
    assert report["manifest_mismatch"] == [0]


def test_verify_fails_an_unreadable_manifest(world, tmp_path):
    out = _copy(world, tmp_path)
    (out / "manifest.json").write_text('{"shards": [')
    report = _failed(out, "manifest.json is unreadable")
    assert report["manifest"] is False


def test_verify_passes_the_campaign_itself(world):
    proc, report = _verify(world["camp"])
    assert proc.returncode == 0 and report["ok"] and report["foreign"] == report["manifest_mismatch"] == []


# --------------------------------------------------------------------------- train
def _reads_step(n):
    def ready(err):
        return any(f"train: step {n}/" in ln for ln in err)
    return ready


def test_train_stops_on_sigterm_with_a_checkpoint_and_resumes_the_same_trajectory(world, tmp_path):
    out = tmp_path / "run"
    cmd = [cosmonet_exe(), "train", world["train"], "--set", f"out={out}"]
    proc = _interrupt(cmd, _reads_step(3), signal.SIGTERM, read_stderr=True)
    assert proc.returncode == 143, describe(proc)
    line = _stopped_line(proc, "SIGTERM", "--resume")
    state = _final(out)
    step = state["step"]
    assert 3 <= step < 40 and f"at step {step}:" in line and f"step_{step:08d}.pt" in line
    assert os.path.exists(out / "checkpoints" / f"step_{step:08d}.pt")
    _ok(_run(["train", world["train"], "--set", f"out={out}", "--resume"]))
    done, ref = _final(out), _final(world["ref"])
    assert done["step"] == ref["step"] == 40
    _same_params(done["model"], ref["model"])


def test_resume_skips_an_unreadable_latest_and_applies_max_steps(world, tmp_path):
    """``latest`` names a truncated file: --resume continues from the newest readable
    checkpoint (one line says which), applies and records the raised max_steps, and ends on
    the uninterrupted run's parameters."""
    out = tmp_path / "run"
    base = ["train", world["train"], "--set", f"out={out}", "--set", "train.checkpoint_every=6"]
    _ok(_run(base + ["--set", "train.max_steps=18"]))
    (out / "checkpoints" / "step_00000018.pt").write_bytes(b"truncated")
    proc = _ok(_run(base + ["--resume"]))
    assert "latest names step_00000018.pt, which is unreadable; using step_00000012.pt" in proc.stderr
    assert "applied train.max_steps 18 -> 40" in proc.stderr
    resumes = [r for r in map(json.loads, open(out / "train_log.jsonl")) if "resume" in r]
    assert len(resumes) == 1 and resumes[0]["step"] == 12
    assert resumes[0]["applied"] == {"train.max_steps": [18, 40]}
    _same_params(_final(out)["model"], _final(world["ref"])["model"])


def test_evaluate_stopped_writes_nothing(world, tmp_path, monkeypatch, capsys):
    """A SIGTERM while evaluating: exit 143, one line saying nothing was written, no JSON."""
    import cosmonet.analysis.d3m_eval as d3m_eval
    from cosmonet import cli

    def signalled(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the signal did not stop evaluate")

    monkeypatch.setattr(d3m_eval, "evaluate_d3m", signalled)
    js = tmp_path / "e.json"
    before = signal.getsignal(signal.SIGTERM)
    code = cli.main(["evaluate", str(world["train"]), "--checkpoint", str(world["ref"]), "--json", str(js),
                     "--plots", str(tmp_path / "figs")])
    assert code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cosmonet: stopped: evaluate stopped by SIGTERM: nothing written ({js} is written whole at "
                   f"the end); rerun the same command"]
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before


# --------------------------------------------------------------------------- run-sim
@pytest.mark.parametrize("ranks,sig", [(1, signal.SIGINT), (2, signal.SIGTERM)], ids=["SIGINT-1", "SIGTERM-mpirun-2"])
def test_run_sim_stops_after_a_step_and_leaves_no_file(tmp_path, ranks, sig):
    """run-sim writes its fields into a temporary file as it goes: a signal stops every rank
    after the same step, with one line and 128 + the signal (mpirun: not 0), and neither
    the file nor its temporary is left."""
    out = tmp_path / "sim.h5"
    cmd = [cosmonet_exe(), "run-sim", "--nc", 32, "--box", 128, "--steps", 400, "--out", out]
    if ranks > 1:
        cmd = [shutil.which("mpirun"), "-np", ranks, "--oversubscribe"] + cmd
    proc = _interrupt(cmd, lambda err: any("run-sim: step 2/" in ln for ln in err), sig, read_stderr=True)
    if ranks == 1:
        assert proc.returncode == 128 + sig, describe(proc)
    else:                                           # mpirun's own exit code
        assert proc.returncode != 0, describe(proc)
    line = _stopped_line(proc, signal.Signals(sig).name, "after step", "nothing written", "rerun the same command")
    assert "/400" in line
    assert os.listdir(tmp_path) == []
