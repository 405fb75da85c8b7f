"""The paper presets (``jdo/conf/experiment/*.yaml`` with a sweep): every job of every preset's
own sweep composes, the command line narrows a preset's sweep, and one reduced sweep runs. Each
preset's default arm also smoke-runs in tests/train/test_config.py."""

import json
import math
import os
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from jdo.train import run
from jdo.train.builder import build
from jdo.train.clocked import cluster_from_config
from jdo.train.config import validate
from tests.conftest import CONF

PRESETS = ("choco_ring", "dpsgd_noniid", "diloco_h", "local_sgd_h", "byzantine", "async_stragglers")
EXPERIMENTS = os.path.join(CONF, "experiment")


def _jobs(params: dict, cli: tuple[str, ...] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for a preset's ``hydra.sweeper.params`` and the
    command line's overrides (its own expansion, as in ``BasicSweeper.sweep``)."""
    parsed = OverridesParser.create().parse_overrides(
        [*(f"{k}={v}" for k, v in params.items()), *cli]
    )
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.fixture(scope="module")
def sweeps():
    """``{preset: (its sweep params, the composed config of every job but the seed)}``: the
    seed is a value, so the jobs of one arm differ only there (composing is ~0.2 s a job)."""
    out = {}
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        for name in PRESETS:
            params = dict(
                OmegaConf.load(os.path.join(EXPERIMENTS, f"{name}.yaml")).hydra.sweeper.params
            )
            jobs = _jobs({k: v for k, v in params.items() if k != "seed"})
            cfgs = [compose("config", overrides=[f"experiment={name}", *j]) for j in jobs]
            out[name] = (params, cfgs)
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_of_a_presets_sweep_composes(name, sweeps):
    params, cfgs = sweeps[name]
    sizes = [len(v.split(",")) for v in params.values()]
    assert (
        len(_jobs(params))
        == math.prod(sizes)
        == len(cfgs) * len(str(params.get("seed", 0)).split(","))
    )
    assert len(cfgs) >= 2
    for cfg in cfgs:  # every arm validates and builds (data, model, algorithm; no training)
        validate(OmegaConf.to_container(cfg, resolve=True))
        build(cfg, cluster=cluster_from_config(cfg.get("cluster"), cfg.workers))
    with open(os.path.join(EXPERIMENTS, f"{name}.yaml"), encoding="utf-8") as f:
        header = f.read().split("\ndefaults:")[0]
    assert f"--multirun experiment={name}" in header
    assert re.search(r"EXPECTED \(measured", header), "the header gives the measured result"
    assert re.search(r"(19|20)\d\d", header), "the header names the paper (author, year)"


def test_the_arms_are_what_the_presets_compare(sweeps):
    arm = lambda cfg: cfg.algorithm._target_.rsplit(".", 1)[-1]
    assert sorted(arm(c) for c in sweeps["choco_ring"][1]) == sorted(
        ["choco_sgd", "dpsgd", "allreduce_sgd"]
    )
    choco = next(c for c in sweeps["choco_ring"][1] if arm(c) == "choco_sgd")
    assert choco.compression._target_ == "jdo.compress.top_k" and choco.compression.ratio == 0.01
    assert {c.partition.alpha for c in sweeps["dpsgd_noniid"][1]} == {0.1}
    assert sorted({c.algorithm.get("sync_every", 1) for c in sweeps["diloco_h"][1]}) == [
        1,
        8,
        32,
        128,
    ]
    assert sorted({c.algorithm.every for c in sweeps["local_sgd_h"][1]}) == [1, 4, 16, 64]
    modes = {
        (c.algorithm.mode, c.algorithm.staleness, c.algorithm.lr_scaling)
        for c in sweeps["async_stragglers"][1]
    }
    assert modes == {
        ("sync", None, None),
        ("async", None, None),
        ("ssp", 4, None),
        ("async", None, "inverse"),
    }
    byz = sweeps["byzantine"][1]
    assert {c.faults.attack for c in byz} == {"sign_flip", "label_flip"} and len(byz) == 8
    assert all(list(c.faults.workers) == [0, 1] for c in byz)


def test_the_command_line_narrows_a_presets_sweep(sweeps):
    """A key given on the command line replaces the preset's values for it; others multiply."""
    params = sweeps["local_sgd_h"][0]
    assert len(_jobs(params, ("seed=0",))) == 4
    assert _jobs(params, ("seed=3", "algorithm.every=2")) == [["algorithm.every=2", "seed=3"]]
    assert len(_jobs(params, ("optimizer.learning_rate=0.1,0.05",))) == 16


def test_a_reduced_preset_sweep_runs(sweeps, tmp_path):
    """``--multirun experiment=local_sgd_h algorithm.every=1,4 seed=0`` at 8 steps, its 2 jobs
    run in-process as the launcher runs them (the CLI's sweeps: tests/test_cli.py): each run
    directory records its overrides, and H = 4 spends a quarter of H = 1's simulated
    communication time (the clock: 8 steps of a fixed 10 ms gradient, all-reduce every H)."""
    cli = ("algorithm.every=1,4", "seed=0", "trainer.steps=8", "trainer.log_every=4")
    jobs = _jobs(sweeps["local_sgd_h"][0], (*cli, "trainer.eval_every=8", "trainer.progress=false"))
    assert [j[:2] for j in jobs] == [
        ["algorithm.every=1", "seed=0"],
        ["algorithm.every=4", "seed=0"],
    ]
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfgs = [compose("config", overrides=["experiment=local_sgd_h", *j]) for j in jobs]
    for i, (cfg, job) in enumerate(zip(cfgs, jobs, strict=True)):
        run(cfg, output_dir=str(tmp_path / str(i)), overrides=job)
    summaries = [json.loads((tmp_path / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["overrides"] for s in summaries] == jobs
    assert all(s["steps"] == 8 and s["eval/avg_model/accuracy"] > 0.2 for s in summaries)
    comm = [s["time/total"] - 8 * 0.01 for s in summaries]
    assert comm[1] > 0 and comm[0] == pytest.approx(4 * comm[1], rel=1e-4)
