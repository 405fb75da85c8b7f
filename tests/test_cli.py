"""``python -m experiments.train`` as a user runs it: files written, sweeps, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _train(*overrides, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_run_writes_config_metrics_summary_and_prints_a_table(tmp_path):
    out = _train("debug=smoke", "lifting=shard_map", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= set(os.listdir(tmp_path))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lifting"] == "shard_map" and summary["workers"] == 8
    log = (tmp_path / "train.log").read_text()
    assert "eval/avg_model/accuracy" in log and "bytes/step" in log


def test_multirun_sweep(tmp_path):
    out = _train("--multirun", "debug=smoke", "workers=1,4", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    workers = sorted(
        json.loads((p / "summary.json").read_text())["workers"]
        for p in tmp_path.iterdir()
        if p.is_dir() and p.name.isdigit()
    )
    assert workers == [1, 4]


@pytest.mark.parametrize(
    "overrides,code,message",
    [
        (("algorithm=nope",), 1, "Available options in 'algorithm':"),
        (("model=resnet9000",), 1, "Could not find 'model/resnet9000'"),
        (("trainer.steps=abc",), 2, "error: trainer.steps: must be a positive integer, got 'abc'"),
        (("trainer.steps=0",), 2, "error: trainer.steps: must be a positive integer, got 0"),
        (("optimizer.learning_rate=-1",), 2, "error: optimizer.learning_rate: must be a positive"),
        (("lifting=shard_map", "workers=16"), 2, "error: workers: the shard_map lifting puts one"),
        (("task=mnist",), 2, "error: task.data.directory: is required"),
        (("task=mnist", "task.data.directory=/no/dir"), 2, "data directory not found: /no/dir"),
        (("trainer.nope=1",), 1, "Key 'nope' is not in struct"),
        (("cpu_devices=0",), 2, "error: cpu_devices: must be a positive integer or null, got 0"),
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_message(overrides, code, message, tmp_path):
    out = _train(*overrides, f"hydra.run.dir={tmp_path}")
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
