"""Study reports (jdo.train.report) on a real 2x2 sweep: two noise levels of least squares x two
seeds, run in-process like a Hydra multirun (one program: the seeds and noise levels change
only the data, so it compiles once). The tables are checked against pandas computed here from
the metrics.jsonl files; damaged, partial, resumed and config-less runs against what they
hold."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jdo.train import run
from jdo.train.report import main
from jdo.train.report_read import find_runs
from jdo.train.report_table import study
from tests.conftest import compose_cfg
from tests.helpers import ROOT, cli_env

BASE = (
    "task=least_squares",
    "optimizer=sgd",
    "optimizer.learning_rate=0.05",
    "workers=4",
    "cluster=datacenter",  # simulated time/* metrics
    "cluster.workers_per_node=4",
    "trainer.steps=20",
    "trainer.log_every=5",
    "trainer.eval_every=10",
    "trainer.progress=false",
    "checkpoint=none",
)
NOISES, SEEDS = ("0.1", "1.0"), (0, 1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A multirun directory laid out as Hydra's (0/, 1/, ...), each run with its overrides."""
    root = tmp_path_factory.mktemp("report") / "multirun"
    job = 0
    for noise in NOISES:
        for seed in SEEDS:
            overrides = [*BASE, f"task.data.noise={noise}", f"seed={seed}"]
            run(compose_cfg(*overrides), output_dir=str(root / str(job)), overrides=overrides)
            job += 1
    return root


def _expected(sweep, metric="train/loss"):
    """Per noise level, the mean and sample std over seeds of each run's last logged value,
    and each run's first step with ``metric`` <= the median of those finals."""
    rows = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        lines = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
        overrides = dict(
            o.split("=", 1) for o in json.loads((job / "summary.json").read_text())["overrides"]
        )
        rows.append(
            {
                "noise": overrides["task.data.noise"],
                "final": [x[metric] for x in lines if metric in x][-1],
                "curve": [(x["step"], x[metric]) for x in lines if metric in x],
            }
        )
    frame = pd.DataFrame(rows)
    target = float(frame["final"].median())
    frame["to_steps"] = [next((s for s, v in c if v <= target), np.nan) for c in frame["curve"]]
    return frame, target


def test_groups_means_and_target_match_pandas(sweep):
    expected, target = _expected(sweep)
    runs, skipped = find_runs([str(sweep)])
    result = study(runs, skipped, target=target)
    table = result.group_table.set_index("task.data.noise").sort_index()
    assert result.metric == "train/loss" and not result.higher and skipped == []
    assert result.columns == ["task.data.noise"]  # seed excluded, though task.data.seed differs
    assert list(table.index) == list(NOISES) and list(table["runs"]) == [2, 2]
    grouped = expected.groupby("noise")
    np.testing.assert_allclose(table["train/loss mean"], grouped["final"].mean(), rtol=1e-12)
    np.testing.assert_allclose(table["train/loss std"], grouped["final"].std(ddof=1), rtol=1e-12)
    reached = grouped["to_steps"].count()
    assert list(table["reached"]) == list(reached) and 0 < reached.sum() < 4
    np.testing.assert_allclose(table["to_steps"], grouped["to_steps"].mean())  # NaN: none did


def test_the_command_writes_the_report_and_png_plots(sweep, tmp_path):
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--target", "1.0"]) == 0
    text = (out / "report.md").read_text()
    for name in ("vs_step.png", "vs_bytes.png", "vs_time.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name  # axes, lines and labels drawn
        assert f"]({name})" in text
    assert "4 runs read (0 partial), 0 skipped, 2 groups." in text
    assert "| task.data.noise | runs | train/loss |" in text
    assert "ddof=1" in text and "at or below 1" in text
    assert len(pd.read_csv(out / "runs.csv")) == 4


def _damaged_copies(sweep, where):
    """A run cut short by a kill (no summary.json, last line half written), a resumed run (an
    attempt's lines of one step twice: the later wins), a run without config, a failed job."""
    cut = where / "cut"
    shutil.copytree(sweep / "0", cut)
    (cut / "summary.json").unlink()
    text = (cut / "metrics.jsonl").read_text()
    (cut / "metrics.jsonl").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    resumed = where / "resumed"
    shutil.copytree(sweep / "1", resumed)
    summary = json.loads((resumed / "summary.json").read_text())
    (resumed / "summary.json").write_text(json.dumps({**summary, "resumed_from": {"step": 10}}))
    last = json.loads((resumed / "metrics.jsonl").read_text().splitlines()[-1])
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**last, "train/loss": 123.0}) + "\n")
    shutil.copytree(sweep / "2", where / "no_config")
    (where / "no_config" / "config.yaml").unlink()
    (where / "failed").mkdir()
    shutil.copy(sweep / "3" / "config.yaml", where / "failed")


def test_partial_resumed_and_unreadable_runs_are_reported_not_fatal(sweep, tmp_path):
    _damaged_copies(sweep, tmp_path)
    runs, skipped = find_runs([str(tmp_path)])
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in runs}
    assert sorted(by_name) == ["cut", "resumed"]
    cut, resumed = by_name["cut"], by_name["resumed"]
    assert cut.last_step == 15 and len(cut.partial) == 3
    assert cut.partial[0].startswith("no summary.json")
    assert cut.partial[1] == "metrics.jsonl: 1 line(s) do not parse (line 4)"
    assert cut.partial[2] == "logged up to step 15 of 20"
    assert resumed.partial == [] and resumed.notes == ["resumed from step 10"]
    assert resumed.final["train/loss"] == 123.0 and resumed.metrics["step"].is_unique
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert reasons["no_config"].startswith("no config.yaml")
    assert reasons["failed"].startswith("no metrics.jsonl or summary.json")
    assert list(study(runs, skipped).group_table["runs"]) == [2]  # seeds 0 and 1 of one config
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "2 runs read (1 partial), 2 skipped" in text and "line(s) do not parse" in text
    assert f"`{tmp_path / 'no_config'}`: no config.yaml" in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}"], "no such directory"),
        (["{sweep}", "--metric", "eval/nope"], "'eval/nope' is logged by none of the 4 runs"),
        (["{sweep}", "--by", "nope"], "'nope' is neither an override nor a config key"),
        (["{sweep}", "--out", "{file}"], "--out: cannot write to"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(sweep, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    names = dict(missing=tmp_path / "missing", sweep=sweep, file=tmp_path / "file")
    args = [a.format(**names) for a in args]
    assert main(["--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_missing_extra_is_one_line_naming_it(sweep, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "pandas" else find_spec(name)
    )
    assert main([str(sweep), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    expected = "reports need pandas and matplotlib: pip install 'jdo[report]' (pandas missing)"
    assert err == f"jdo-report: error: {expected}\n"


def test_by_pools_and_the_module_runs_from_a_checkout(sweep, tmp_path):
    runs, skipped = find_runs([str(sweep)])
    pooled = study(runs, skipped, by=["optimizer"])  # the same in every run: one group of 4
    assert list(pooled.group_table["runs"]) == [4]
    assert pooled.group_table["optimizer"][0] == "sgd"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path / "missing")],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    expected = f"python -m experiments.report: error: {tmp_path}/missing: no such directory\n"
    assert done.stderr == expected
