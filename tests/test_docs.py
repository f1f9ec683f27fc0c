"""Docs that cannot rot: every command block of README.md and docs/*.md is checked.

Every shell command in a fenced ``bash``/``sh`` block is extracted (continuation lines
joined, comments dropped, ``VAR=value`` lines of the same page substituted) and:

- ``cosmonet ...`` (also behind ``mpirun``/``srun``/``torchrun -m cosmonet.cli``) is parsed
  by cosmonet's own argument parser, and the YAML config it names is loaded with the
  command's ``--set`` overrides by the loader the command itself uses;
- ``make TARGET`` must name a Makefile target, ``sbatch ... slurm/X.sbatch`` an existing
  script whose ``CONFIG=`` loads, ``scripts/X`` an executable script;
- the cheap commands (``run-sim`` up to 32^3, ``power``, ``simulate`` of the demo config up
  to 16 simulations, ``verify`` of what they made) run for real, in the order a reader meets them, at the sizes the docs give.

So a renamed option, a config key that no longer exists, or a step file the docs point at
breaks the suite instead of a newcomer. The expensive commands (training, evaluation,
probes, the large campaigns) are only parsed and loaded; ``make test`` and ``make demo``
run the real thing elsewhere.
"""
import glob
import os
import re
import shlex
import subprocess

import pytest

from mpi_util import cosmonet_exe, mpi_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
SHELLS = ("bash", "sh", "shell", "console")
#: a `cosmonet` subcommand with the loader of the config file it takes, if any
CONFIG_COMMANDS = {"simulate": "campaign", "train": "train", "evaluate": "train"}


def command_blocks(page):
    """(line number, command) of every command in the page's shell blocks."""
    text = open(os.path.join(ROOT, page)).read()
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if m.group(1) not in SHELLS:
            continue
        first = text.count("\n", 0, m.start(2)) + 1
        pending, start = "", None
        for i, line in enumerate(m.group(2).splitlines()):
            if start is None:
                start = first + i
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            cmd = (pending + line).strip()
            pending = ""
            if cmd:
                out.append((start, cmd))
            start = None
    return out


def words(cmd, variables):
    """The command's words, comments dropped and ``$VAR`` of the page substituted."""
    for name, value in variables.items():
        cmd = cmd.replace("${%s}" % name, value).replace("$" + name, value)
    return shlex.split(cmd, comments=True)


def all_commands():
    cases = []
    for page in PAGES:
        variables = {}
        for line, cmd in command_blocks(page):
            w = words(cmd, variables)
            if len(w) == 1 and re.fullmatch(r"[A-Z_]+=\S+", w[0]):
                name, value = w[0].split("=", 1)
                variables[name] = value
                continue
            if w:
                cases.append(pytest.param(page, line, w, id=f"{page}:{line}"))
    return cases


COMMANDS = all_commands()


def cosmonet_args(w):
    """The arguments after ``cosmonet`` (or ``-m cosmonet.cli``), or None."""
    for i, word in enumerate(w):
        if os.path.basename(word) == "cosmonet":
            return w[i + 1:]
        if word == "cosmonet.cli" and i > 0 and w[i - 1] == "-m":
            return w[i + 1:]
    return None


def load_config(kind, path, overrides, out=None):
    if kind == "campaign":
        from cosmonet.campaign.config import load_config as load
        return load(path, overrides, out=out)
    from cosmonet.train.trainconfig import load_train_config
    return load_train_config(path, overrides)


def makefile_targets():
    text = open(os.path.join(ROOT, "Makefile")).read()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def sbatch_exports(w):
    env = {}
    for i, word in enumerate(w):
        if word.startswith("--export="):
            for item in word[len("--export="):].split(","):
                if "=" in item:
                    k, v = item.split("=", 1)
                    env[k] = v
    return env


@pytest.mark.parametrize("page,line,w", COMMANDS)
def test_doc_command_is_current(page, line, w):
    from cosmonet.cli import build_parser
    where = f"{page}:{line}: {' '.join(w)}"
    args = cosmonet_args(w)
    if args is not None:
        try:
            ns = build_parser().parse_args(args)
        except SystemExit as exc:                  # --help and friends
            pytest.fail(f"{where}: the parser exits {exc.code}")
        except Exception as exc:
            pytest.fail(f"{where}: {exc}")
        kind = CONFIG_COMMANDS.get(args[0])
        if kind:
            assert os.path.exists(os.path.join(ROOT, ns.config)), f"{where}: no config {ns.config}"
            load_config(kind, os.path.join(ROOT, ns.config), ns.overrides,
                        out=getattr(ns, "out", None))
        checkpoint = getattr(ns, "checkpoint", None)
        if checkpoint:
            assert not re.search(r"step_\d+\.pt$", checkpoint), \
                f"{where}: name the run directory, not one step file (it depends on batch and ranks)"
        return
    if w[0] == "make":
        targets = [t for t in w[1:] if not t.startswith("-") and "=" not in t]
        assert set(targets) <= makefile_targets(), f"{where}: not a Makefile target"
        return
    if w[0] == "sbatch":
        script = w[-1]
        assert script.startswith("slurm/") and os.path.exists(os.path.join(ROOT, script)), where
        config = sbatch_exports(w).get("CONFIG")
        if config:
            loader = "train" if "train" in script else "campaign"
            load_config(loader, os.path.join(ROOT, config), [])
        return
    if w[0].startswith("scripts/"):
        assert os.access(os.path.join(ROOT, w[0]), os.X_OK), f"{where}: not an executable script"
        return
    if w[0].startswith(".venv/bin/") and w[1:3] == ["-m", "pytest"]:
        tests = [t for t in w[3:] if t.startswith("tests/")]
        assert all(os.path.exists(os.path.join(ROOT, t.split("::")[0])) for t in tests), where


def runnable(w, cwd):
    """Cheap commands, run for real: run-sim up to 32^3, power, the demo campaign up to 16
    simulations, and verify of a directory an earlier command made."""
    args = cosmonet_args(w)
    if not args or any("cuda" in a for a in args):          # GPU commands: parsed only
        return False
    value = lambda opt, default: args[args.index(opt) + 1] if opt in args else default  # noqa: E731
    if args[0] == "run-sim":
        return int(value("--nc", 32)) <= 32 and "--linear-field" not in args
    if args[0] == "simulate":
        sets = dict(s.split("=", 1) for s in args if "=" in s and not s.startswith("-"))
        return "configs/demo.yaml" in args and int(sets.get("n_sims", 8)) <= 16
    if args[0] == "verify":
        return os.path.isdir(os.path.join(cwd, args[1]))
    return args[0] == "power"


def test_cheap_doc_commands_run(tmp_path):
    """The README's first steps, as a newcomer types them, in a fresh directory."""
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    env = mpi_env()
    ran = []
    for page in ("README.md", "docs/getting-started.md", "docs/campaigns.md"):
        for line, cmd in command_blocks(page):
            w = words(cmd, {})
            if not runnable(w, tmp_path):
                continue
            exe = [cosmonet_exe() if os.path.basename(x) == "cosmonet" else x for x in w]
            if exe[0] == "mpirun" and "--oversubscribe" not in exe:
                exe[1:1] = ["--oversubscribe"]
            proc = subprocess.run(exe, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{page}:{line}: {cmd}\nexit {proc.returncode}\n{proc.stderr[-2000:]}"
            ran.append(cmd)
    assert len(ran) >= 7, ran
