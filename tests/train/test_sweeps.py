"""Sweeps: ``hydra/sweeper=optuna`` and ``hydra/launcher=ray`` (jdo.train.sweeps), the objective
the CLI returns (jdo.train.cli), and the one-line errors. The sweeps run the CLI's Hydra entry
in this process (a subprocess costs seconds of start-up per test)."""

import json
import logging
import math
import os
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from jdo.train import ConfigError, cli
from jdo.train.sweeps import register_presets
from tests.conftest import CONF

# The cheapest supervised run: least squares, a linear model, 2 workers, 20 steps.
TINY = (
    "task=least_squares",
    "workers=2",
    "optimizer=sgd",
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.eval_every=20",
    "trainer.progress=false",
    "checkpoint=none",
    "objective.metric=eval/avg_model/loss",
    "objective.direction=minimize",
)


def _compose_hydra(*overrides):
    register_presets()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _cli(monkeypatch, *argv):
    """``jdo-train ARGV`` in this process; Hydra's global state and the root logger's
    handlers (Hydra configures logging) are restored after it."""
    monkeypatch.setattr(sys, "argv", ["jdo-train", *argv])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        cli.cli()
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def test_optuna_sweeper_composes_with_the_objective_direction():
    cfg = _compose_hydra("hydra/sweeper=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert cfg.objective.metric == "eval/avg_model/accuracy"
    assert sweeper.direction == "maximize" == cfg.objective.direction
    assert sweeper.n_jobs == 1 and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    cfg = _compose_hydra("hydra/sweeper=optuna", "objective.direction=minimize")
    assert cfg.hydra.sweeper.direction == "minimize"


def test_ray_launcher_composes():
    cfg = _compose_hydra("hydra/launcher=ray")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.init.address is None
    assert launcher.ray.remote.max_calls == 1 and launcher.ray.remote.num_cpus == 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    path = launcher.ray.remote.runtime_env.env_vars.PYTHONPATH
    assert path.split(os.pathsep)[0] == os.path.dirname(root)


@pytest.mark.slow  # a 4-trial sweep (~20 s): out of the not-slow suite's budget; CI runs it
def test_optuna_sweep_runs_its_trials_and_a_diverged_one_gets_the_worst_value(
    monkeypatch, tmp_path
):
    """A grid over two seeds and two divergence guards: each of the 4 trials runs once (one
    program: the later ones load it from the compilation cache). The guard set below 1 stops
    its run at once as diverging: that trial gets +inf (minimizing) and the sweep goes on; the
    best value and params are those of the best finite run's summary."""
    _cli(
        monkeypatch,
        "--multirun",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=4",
        "seed=choice(0,1)",
        "trainer.divergence=choice(1e6,1e-9)",
        f"hydra.sweep.dir={tmp_path}",
        *TINY,
    )
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    values, tried = {}, set()
    for job in jobs:
        config = yaml.safe_load((job / "config.yaml").read_text())
        key = (config["seed"], config["trainer"]["divergence"])
        tried.add(key)
        if key[1] == 1e6:
            values[key[0]] = json.loads((job / "summary.json").read_text())["eval/avg_model/loss"]
        else:
            assert not (job / "summary.json").exists()
            assert "the sweeper sees objective inf" in (job / "train.log").read_text()
    assert tried == {(0, 1e6), (1, 1e6), (0, 1e-9), (1, 1e-9)}
    assert values[0] != values[1]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = min(values, key=values.get)
    assert results["best_value"] == pytest.approx(values[best], rel=1e-12)
    assert results["best_params"] == {"seed": best, "trainer.divergence": 1e6}


def test_objective_value_reads_the_summary():
    objective = {"metric": "eval/avg_model/accuracy", "direction": "maximize"}
    summary = {"eval/avg_model/accuracy": 0.75, "train/loss": 0.5, "lifting": "vmap"}
    assert cli.objective_value(summary, objective, required=True) == 0.75
    assert cli.objective_value({"train/loss": 0.5}, objective, required=False) is None
    nan = {"eval/avg_model/accuracy": math.nan}
    assert cli.objective_value(nan, objective, required=True) == -math.inf
    minimize = {**objective, "direction": "minimize"}
    assert cli.objective_value(nan, minimize, required=True) == math.inf
    with pytest.raises(ConfigError) as e:
        cli.objective_value({"train/loss": 0.5, "steps": 3}, objective, required=True)
    assert str(e.value) == (
        "objective.metric: 'eval/avg_model/accuracy' is not in this run's summary; "
        "available: steps, train/loss"
    )


@pytest.mark.parametrize(
    ("arg", "module", "extra"),
    [("hydra/sweeper=optuna", "optuna", "sweep"), ("hydra/launcher=ray", "ray", "ray")],
)
def test_a_missing_plugin_is_one_line_naming_the_extra(monkeypatch, capsys, arg, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    monkeypatch.setattr(sys, "argv", ["jdo-train", "--multirun", arg, "trainer.steps=10"])
    with pytest.raises(SystemExit) as e:
        cli.cli()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {arg} needs the {extra} extra (no module {module}): pip install 'jdo[{extra}]'\n"
    )


def test_the_old_tensorboard_switch_is_refused_naming_the_list_syntax(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["jdo-train", "logger.tensorboard=true"])
    with pytest.raises(SystemExit) as e:
        cli.cli()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: logger.tensorboard=true: trackers are chosen as a list now")
    assert "logger=[tensorboard]" in err and "\n" not in err


def test_a_direction_the_sweeper_cannot_follow_is_one_line(monkeypatch, capsys):
    argv = ["jdo-train", "--multirun", "hydra/sweeper=optuna", "objective.direction=max"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        cli.cli()
    assert e.value.code == 2
    expected = "error: objective.direction: must be one of maximize, minimize, got 'max'\n"
    assert capsys.readouterr().err == expected
    with pytest.raises(SystemExit) as e:  # hydra.sweeper.direction= set against the objective
        cli._check_direction({"metric": "train/loss", "direction": "maximize"}, "minimize")
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: hydra.sweeper.direction: minimize but objective.direction is maximize: set "
        "objective.direction (hydra/sweeper=optuna follows it)\n"
    )
