"""``python -m experiments.train`` (``jdo-train``) as a user runs it: files written,
``--help``. Sweeps: the README's ``--multirun`` commands (tests/test_readme_commands.py). Bad
command lines are in tests/test_bad_input.py."""

import json
import os
from pathlib import Path

from tests.conftest import CONF
from tests.helpers import run_cli


def test_run_writes_config_metrics_summary_and_prints_a_table(tmp_path):
    out = run_cli("debug=smoke", "lifting=shard_map", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= set(os.listdir(tmp_path))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lifting"] == "shard_map" and summary["workers"] == 8
    log = (tmp_path / "train.log").read_text()
    assert "eval/avg_model/accuracy" in log and "bytes/step" in log


def test_summary_table_shows_the_asynchrony_keys():
    from jdo.train.cli import summary_table

    summary = {"steps": 30, "staleness/mean": 2.5, "asynchrony/updates": 30.0, "other": 1.0}
    summary |= {"asynchrony/gradients": 31.0, "bytes/wire_per_update": 1536.0}
    lines = summary_table(summary).splitlines()
    for key in ("staleness/mean", "asynchrony/updates", "asynchrony/gradients"):
        assert any(line.split()[0] == key for line in lines), key
    assert any(line.split()[0] == "bytes/wire_per_update" for line in lines)
    assert not any(line.split()[0] == "other" for line in lines)


def test_help_is_jdos_own_short_usage():
    """Every config group with its options (read from jdo/conf by Hydra), examples, where the
    README is, and how to get Hydra's own help; nothing runs, JAX never starts."""
    out = run_cli("--help", timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("jdo-train: ")
    conf = Path(CONF)
    groups = sorted(  # nested groups too (cluster/compute, cluster/stragglers)
        str(p.relative_to(conf))
        for p in conf.rglob("*")
        if p.is_dir() and p.parts[len(conf.parts)] != "hydra" and p.name != "__pycache__"
    )
    section = text.split("Config groups")[1].split("Examples:")[0].splitlines()[1:]
    assert sorted(line.split(": ")[0] for line in section if line) == groups
    assert "algorithm: " in text and "dpsgd" in text.split("algorithm: ")[1].splitlines()[0]
    assert text.count("  jdo-train ") == 3  # three example commands
    assert "README.md" in text and "--hydra-help" in text
    assert "== Config ==" not in text  # not Hydra's default page with the whole config
    assert run_cli("--hydra-help", timeout=120).stdout.startswith("Hydra (")
