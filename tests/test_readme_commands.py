"""Every ``python -m experiments.train ...`` command in README.md runs, at reduced steps, and
does not diverge.

The README is parsed at test time (code blocks and inline code), so a command added to it is
tested without touching this file. Each runs with ``trainer.steps=100`` (logged at 50 and 100,
no checkpoints; RL 20 steps of 8 examples logged at 10 and 20; MNIST and the CNN 10 steps
of 4 examples logged at 5 and 10) in-process through Hydra's compose
and :func:`jdo.train.run`; ``--multirun`` sweeps run as the CLI in a subprocess. A command
that names a data directory or file gets small ones written by ``tests/helpers.py``.
Commands for a SLURM cluster (``hydra/launcher=slurm``) cannot run here and are skipped;
``backend=ray`` ones are run by tests/train/test_ray.py, which shares one Ray instance.

Not diverging: the last logged training loss is finite and below the first one (for RL
tasks, whose loss is not a progress measure, finite and the episode return not lower).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_idx

ROOT = Path(__file__).parent.parent
PREFIX = "python -m experiments.train"
REDUCED = {
    "trainer.steps": "100",
    "trainer.log_every": "50",
    "trainer.eval_every": "50",
    "trainer.progress": "false",
    "checkpoint": "none",
}
RUN_DIRS = ("hydra.run.dir", "hydra.sweep.dir")
HEAVY = (
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.eval_every=10",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=64",
)
CONV = (  # MNIST's 28x28 images and the CNN: the costliest steps here; a few steps show that
    # the command runs and learns
    "trainer.steps=10",
    "trainer.log_every=5",
    "trainer.eval_every=5",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=64",
)

pytestmark = pytest.mark.slow  # ~20 commands, a few of them RL or sweeps


def readme_commands(text: str) -> list[str]:
    """The overrides of every ``python -m experiments.train`` command, in order, a trailing
    ``# comment`` dropped; commands that differ only in what this test overrides (steps, run
    directory) once."""
    found, seen = [], set()
    for match in re.finditer(re.escape(PREFIX) + r"([^`\n]*)", text):
        args = match.group(1).split(" #")[0].strip()
        same = tuple(t for t in shlex.split(args) if _key(t) not in (*REDUCED, *RUN_DIRS))
        if same not in seen:
            seen.add(same)
            found.append(args)
    return found


def not_run_here(args: str) -> str | None:
    """Why this test does not run a README command, or None if it does."""
    if "hydra/launcher=slurm" in args:
        return "needs a SLURM cluster (hydra/launcher=slurm)"
    if "backend=ray" in args:  # each would start its own Ray instance and worker processes
        return "covered by tests/train/test_ray.py (the CLI with backend=ray, one Ray)"
    return None


def _key(token: str) -> str:
    return token.split("=", 1)[0].lstrip("+~")


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def _prepare(args: str, tmp_path: Path) -> tuple[list[str], bool]:
    """The command's overrides with the reduced steps and local data files; whether it is a
    ``--multirun`` sweep."""
    tokens = shlex.split(args)
    multirun = "--multirun" in tokens or "-m" in tokens
    out = []
    for token in tokens:
        if token in ("--multirun", "-m") or _key(token) in REDUCED:
            continue
        if _key(token) in RUN_DIRS:
            continue  # each run gets its own directory under tmp_path
        if _key(token) == "task.data.directory":
            token = f"task.data.directory={_mnist_dir(tmp_path / 'mnist')}"
        if _key(token) == "task.data.path":
            token = f"task.data.path={_npz(tmp_path / 'data.npz')}"
        out.append(token)
    if "task=npz" in out and not any(_key(t) == "task.data.path" for t in out):
        out.append(f"task.data.path={_npz(tmp_path / 'data.npz')}")
    out += [f"{k}={v}" for k, v in REDUCED.items()]
    return out, multirun


def _images(n: int, shape, seed: int):
    """Learnable images: class c is noise around brightness 20 c, so a few steps lower the
    loss (on pure noise a falling loss would prove nothing)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    noise = rng.integers(0, 40, size=(n, *shape))
    return (noise + 20 * labels.reshape(-1, *[1] * len(shape))).astype(np.uint8), labels


def _mnist_dir(directory: Path) -> str:
    """The four MNIST IDX files (written by ``tests/helpers.py``'s ``write_idx``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 256), ("t10k", 64)):
        images, labels = _images(n, (28, 28), seed=len(split))
        write_idx(str(directory / f"{split}-images-idx3-ubyte"), images)
        write_idx(str(directory / f"{split}-labels-idx1-ubyte"), labels.astype(np.uint8))
    return str(directory)


def _npz(path: Path) -> str:
    (x_train, y_train), (x_test, y_test) = _images(256, (32, 32, 3), 0), _images(64, (32, 32, 3), 1)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


def _check_progress(records: list[dict], what: str) -> None:
    assert len(records) >= 2, f"{what}: fewer than two logged steps"
    first, last = records[0], records[-1]
    assert all(map(_finite, (first["train/loss"], last["train/loss"]))), (what, last)
    if "train/episode_return" in last:  # RL: the loss is no progress measure
        assert last["train/episode_return"] >= first["train/episode_return"], (what, records)
    else:
        assert last["train/loss"] < first["train/loss"], (what, records)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and abs(x) != float("inf")


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 10
    assert any("algorithm=choco_sgd compression=top_k topology=ring" in c for c in COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=[c or "(defaults)" for c in COMMANDS])
def test_readme_command_runs_and_does_not_diverge(args, tmp_path):
    reason = not_run_here(args)
    if reason:
        pytest.skip(reason)
    overrides, multirun = _prepare(args, tmp_path)
    if multirun:
        _run_sweep(overrides, tmp_path, args)
        return
    from hydra import compose, initialize_config_dir

    from jdo.train import run
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
        data = cfg.task.get("data") or {}
        conv = "mnist" in str(data.get("_target_")) or str(cfg.model.get("_target_")) == (
            "jdo.models.CNN"
        )
        if conv:
            cfg = compose(config_name="config", overrides=[*overrides, *CONV])
        elif cfg.task.get("kind") == "rl":  # an RL update is a whole rollout
            cfg = compose(config_name="config", overrides=[*overrides, *HEAVY])
    run_dir = tmp_path / "run"
    summary = run(cfg, output_dir=str(run_dir))
    assert _finite(summary["train/loss"]), summary
    _check_progress(_records(run_dir), args)


def _run_sweep(overrides: list[str], tmp_path: Path, what: str) -> None:
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [
        *(sys.executable, "-m", "experiments.train", "--multirun"),
        *overrides,
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.jsonl"))
    sizes = [len(v.split("=", 1)[1].split(",")) for v in overrides if "," in v]
    assert len(jobs) == math.prod(sizes), jobs
    for job in jobs:
        _check_progress(_records(job), f"{what} (job {job.name})")
