"""Bad input, as ``python -m experiments.train`` meets it: one clear message naming the key and
what is allowed, a non-zero exit status, no traceback, and nothing lost — every case runs in a
directory that already holds a finished run, whose checkpoints and metrics must come out
byte-identical.

All cases run one after the other in ONE fresh process (Hydra's entry point called in-process;
``SystemExit`` carries the status the shell sees): fast, and isolated from what other tests did
to this process's logging and output capture.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_idx, write_mnist_dir

SMOKE = ("debug=smoke", "model.hidden=[16]")
ROOT = Path(__file__).parent.parent


def _run_cases(cases_json: str, out_json: str) -> None:
    """In a fresh process: each ``argv`` of ``cases_json`` through the CLI entry point."""
    from experiments.train import cli

    script = str(ROOT / "experiments" / "train.py")
    results = []
    for argv in json.loads(Path(cases_json).read_text()):
        sys.argv = [script, *argv]
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err):
            try:
                cli()
            except SystemExit as e:
                code = 0 if e.code is None else e.code
        results.append({"status": code, "stderr": err.getvalue()})
    Path(out_json).write_text(json.dumps(results))


def _fingerprint(run_dir: Path) -> dict[str, str]:
    """Every file of the finished run that must survive (Hydra's own .hydra/ aside)."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = Path(root) / name
            rel = str(path.relative_to(run_dir))
            if not rel.startswith((".hydra", "train.log")):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished smoke run (8 workers, checkpoints) to run the bad inputs into."""
    run_dir = tmp_path_factory.mktemp("finished")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", *SMOKE, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (run_dir / "checkpoints" / "3").is_dir()
    return run_dir


def _files(tmp_path: Path) -> dict[str, str]:
    """Data files for the data-file cases."""
    good = write_mnist_dir(str(tmp_path / "mnist"))
    bad = shutil.copytree(good, tmp_path / "mnist_truncated")
    images = bad / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    notidx = shutil.copytree(good, tmp_path / "mnist_not_idx")
    (notidx / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04 this is a zip, not IDX")
    write_idx(str(tmp_path / "unused.idx"), __import__("numpy").zeros(3, "uint8"))
    (tmp_path / "broken.npz").write_bytes(b"not an npz archive")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {"truncated": str(bad), "not_idx": str(notidx), "npz": str(tmp_path / "broken.npz"),
            "blocked": str(blocker / "run")}  # fmt: skip


CASES = [  # (overrides, exit status, message)
    (("algorithm=nope",), 1, "Could not find 'algorithm/nope'"),
    (("model=resnet9000",), 1, "Could not find 'model/resnet9000'"),
    (("trainer.nope=1",), 1, "Key 'nope' is not in struct"),
    (("trainer.steps=abc",), 2, "error: trainer.steps: must be a positive integer, got 'abc'"),
    (("trainer.steps=0",), 2, "error: trainer.steps: must be a positive integer, got 0"),
    (("workers=0",), 2, "error: workers: must be a positive integer, got 0"),
    (("seed=1.5",), 2, "error: seed: must be an integer, got 1.5"),
    (("optimizer.learning_rate=-1",), 2, "error: optimizer.learning_rate: must be a positive"),
    (
        ("lifting=shard_map", "workers=16"),
        2,
        "error: workers: the shard_map lifting puts one worker per device: workers must be 1..8",
    ),
    (
        ("lifting.devices=3",),
        2,
        "error: lifting.devices: spreads the workers over this many "
        "devices: it must divide workers (8)",
    ),
    (("algorithm=dpsgd", "topology.n=5"), 2, "error: topology.n: must equal workers (8), got 5"),
    (
        ("partition=dirichlet", "partition.alpha=0"),
        2,
        "error: partition.alpha: must be a positive number, got 0",
    ),
    (
        ("trainer.nonfinite=maybe",),
        2,
        "error: trainer.nonfinite: must be one of stop, skip; got 'maybe'",
    ),
    (
        ("trainer.log_every=3", "trainer.steps=3", "checkpoint.every=2"),
        2,
        "error: checkpoint.every: must be a multiple of trainer.log_every (3) or null, got 2",
    ),
    (
        ("checkpoint.resume=sometimes",),
        2,
        "error: checkpoint.resume: must be one of auto, force; got 'sometimes'",
    ),
    (
        ("fault.kill_at_step=-3",),
        2,
        "error: fault.kill_at_step: must be a positive integer or null, got -3",
    ),
    (
        ("distributed.num_processes=2",),
        2,
        "error: distributed.coordinator: is required when distributed.num_processes is set",
    ),
    (("task=mnist",), 2, "error: task.data.directory: is required"),
    (("task=mnist", "task.data.directory=/no/dir"), 2, "data directory not found: /no/dir"),
    (("task=mnist", "task.data.directory={truncated}"), 2, "header says shape"),
    (("task=mnist", "task.data.directory={not_idx}"), 2, "not an IDX file (bad magic number)"),
    (("task=npz", "task.data.path={npz}"), 2, "error: task.data: "),
    (
        ("optimizer.learning_rate=0.01",),
        2,
        "error: checkpoint.resume: {run}/checkpoints holds a checkpoint (step 3) of a different "
        "config: optimizer.learning_rate was 0.001, is now 0.01",
    ),
    (
        ("workers=4",),
        2,
        "error: checkpoint.resume: {run}/checkpoints holds a checkpoint (step 3)"
        " of a different config: workers was 8, is now 4",
    ),
    (
        ("trainer.steps=2", "trainer.eval_every=1"),
        2,
        "error: trainer.steps: the checkpoint in {run}/checkpoints is at step 3: use "
        "trainer.steps >= 3",
    ),
]


@pytest.fixture(scope="module")
def outcomes(finished_run, tmp_path_factory):
    """Every case (and the unwritable run directory) run in one fresh process, each into its
    own copy of the finished run; ``{case id: (status, stderr, files, before, run_dir)}``."""
    work = tmp_path_factory.mktemp("bad_input")
    files = _files(work)
    cases, prepared = [], {}
    for i, (overrides, _, _) in enumerate(CASES):
        run_dir = work / f"run{i}"
        shutil.copytree(finished_run, run_dir)
        names = {**files, "run": str(run_dir)}
        prepared[i] = (names, _fingerprint(run_dir), run_dir)
        cases.append([*SMOKE, *(o.format(**names) for o in overrides), f"hydra.run.dir={run_dir}"])
    cases.append([*SMOKE, f"hydra.run.dir={files['blocked']}"])
    (work / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = f"import tests.test_bad_input as t; t._run_cases({str(work / 'cases.json')!r}, " \
           f"{str(work / 'out.json')!r})"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((work / "out.json").read_text())
    return results, prepared, files


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_one_message_non_zero_exit_nothing_lost(index, outcomes):
    results, prepared, _ = outcomes
    _, code, message = CASES[index]
    names, before, run_dir = prepared[index]
    status, stderr = results[index]["status"], results[index]["stderr"]
    assert status == code, stderr
    assert message.format(**names) in stderr
    assert "Traceback" not in stderr
    assert _fingerprint(run_dir) == before


def test_unwritable_output_directory(outcomes, tmp_path):
    from hydra import compose, initialize_config_dir

    from jdo.train import ConfigError, run
    from tests.conftest import CONF

    blocked = _files(tmp_path)["blocked"]
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(SMOKE))
    expected = f"output_dir: cannot write to {blocked}: Not a directory"
    with pytest.raises(ConfigError, match=expected):
        run(cfg, output_dir=blocked)
    # and from the command line, where Hydra itself would make the run directory
    results, _, files = outcomes
    status, stderr = results[-1]["status"], results[-1]["stderr"]
    blocked = files["blocked"]
    assert status == 2
    parent = os.path.dirname(blocked)
    assert f"error: hydra.run.dir: cannot create {blocked}: {parent} is not a directory" in stderr
    assert "Traceback" not in stderr
