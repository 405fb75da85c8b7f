"""backend=ray: the real asynchronous parameter server (jdo/train/ray_ps.py, ray_run.py).

Few and short: one local Ray instance for the module (start-up takes seconds), three worker
processes, logistic regression. Each run checks what it can: reaching the target, the SSP
progress rule read from the event log (independently of the server's own counters), a worker
killed by PID mid-run, the command line, and a killed driver resuming from its checkpoint.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from jdo.train import run
from jdo.train.ray_ps import staleness_bound
from jdo.train.ray_run import FAULT_ENV, init_ray

W = 3
STEPS = 600
TARGET_GAP = 0.01  # f(x) - f(x*) of the full objective; it starts at 0.35 (x = 0)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RUN = (
    "backend=ray",
    "algorithm=parameter_server",
    "task=logistic",
    f"workers={W}",
    "optimizer=sgd",
    "trainer.log_every=50",
    "trainer.eval_every=100",
    "trainer.progress=false",
)


@pytest.fixture(scope="module")
def ray_instance():
    started = init_ray(None, num_cpus=W + 1)  # the server and W workers
    yield
    if started:
        ray.shutdown()


def _run(make_cfg, tmp_path, *overrides):
    cfg = make_cfg(*RUN, f"trainer.steps={STEPS}", "checkpoint=none", *overrides)
    return run(cfg, output_dir=str(tmp_path))


def _progress_violations(events: np.ndarray, staleness: int) -> list[int]:
    """Events whose worker started its gradient while more than ``staleness`` gradients ahead
    of the slowest worker, read from the event log alone: the worker read version r, when
    worker j had done ``#{events of j applied at or before r}``."""
    worker = events[:, 1].astype(int)
    read = events[:, 2].astype(int)
    applied = events[:, 3].astype(int)
    bad = []
    for e in range(len(events)):
        done = np.bincount(worker[applied <= read[e]], minlength=W)
        mine = np.sum((worker == worker[e]) & (applied < applied[e]))  # its earlier gradients
        if done.min() < mine - staleness:
            bad.append(e)
    return bad


def _check_events(summary):
    events = summary["events"]
    assert len(events) == STEPS and np.array_equal(events[:, 3], np.arange(1, STEPS + 1))
    taus = (events[:, 3] - 1 - events[:, 2]).astype(int)
    assert taus.min() >= 0
    hist = np.bincount(taus)
    assert summary["staleness/histogram"] == hist.tolist()
    assert summary["staleness/mean"] == pytest.approx(taus.mean())
    return taus


@pytest.mark.slow  # Ray and three worker processes start (the server logic: test_ray_ps.py)
def test_async_reaches_the_target_with_measured_staleness(ray_instance, make_cfg, tmp_path):
    summary = _run(make_cfg, tmp_path, "parameter_server.mode=async")
    taus = _check_events(summary)
    assert summary["train/objective_gap"] < TARGET_GAP, summary["train/objective_gap"]
    assert taus.max() >= 1  # three processes without a barrier overlap
    assert sorted(set(summary["events"][:, 1].astype(int))) == list(range(W))
    assert sum(summary["updates/by_worker"]) == STEPS
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(50, STEPS + 1, 50))
    assert all(x["updates_per_s"] > 0 and "staleness/mean" in x for x in lines)


@pytest.mark.slow  # Ray and three worker processes start (the server logic: test_ray_ps.py)
def test_ssp_keeps_its_progress_rule_and_survives_a_killed_worker(
    ray_instance, make_cfg, tmp_path, monkeypatch
):
    """ssp(2) with worker 1's process SIGKILLed at update 150: Ray restarts it, the others
    wait for it within their window, and the run reaches the target."""
    s = 2
    monkeypatch.setenv(FAULT_ENV, "ray_kill_worker:1@150")
    summary = _run(
        make_cfg, tmp_path, "parameter_server.mode=ssp", f"parameter_server.staleness={s}"
    )
    taus = _check_events(summary)
    assert summary["train/objective_gap"] < TARGET_GAP, summary["train/objective_gap"]
    # the progress rule, from the server's counters at every release and from the event log
    releases = summary["releases"]
    assert summary["ssp/max_lead"] <= s and np.max(releases[:, 1] - releases[:, 2]) <= s
    assert _progress_violations(summary["events"], s) == []
    assert taus.max() <= staleness_bound(W, s)
    # worker 1 died once, came back as another process and contributed after the kill
    pids = summary["pids"][1]
    assert len(pids) == 2 and pids[0] != pids[1] and summary["restarts"][1] == 1
    late = summary["events"][summary["events"][:, 3] > 150]
    assert np.sum(late[:, 1] == 1) > 0


def _cli(run_dir, *overrides, env=None):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *RUN, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow  # two fresh driver processes
def test_cli_joins_the_cluster_and_a_killed_driver_resumes(ray_instance, tmp_path):
    """``python -m experiments.train backend=ray ... ray.address=<this module's instance>``
    (``auto`` would pick the newest instance on the machine, maybe another test process's):
    the first driver is SIGKILLed after its checkpoint at update 100 or later; the same command
    resumes from it."""
    args = (
        "parameter_server.mode=async",
        "workers=2",
        "trainer.steps=200",
        "checkpoint.every=50",
        f"ray.address={ray.get_runtime_context().gcs_address}",
    )
    first = _cli(tmp_path, *args, env={FAULT_ENV: "ray_kill_driver@100"})
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (tmp_path / "summary.json").exists()
    second = _cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["updates"] == 200
    assert summary["resumed_from"]["step"] >= 100
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [50, 100, 150, 200]
    rows = (tmp_path / "events.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[3]) for r in rows] == list(range(1, 201))
