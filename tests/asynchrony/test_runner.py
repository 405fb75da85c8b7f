"""The simulated asynchronous parameter server through the runner: the cluster reaches it, its
simulated time is the schedule's, and its staleness is logged. (A test-only algorithm node:
algorithm=parameter_server with an asynchronous mode is the command-line route.)"""

import json

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from jdo import asynchrony
from jdo.train import ConfigError, run
from jdo.train.clocked import cluster_from_config

RUN = (
    "task=logistic",
    "workers=4",
    "trainer.steps=30",
    "trainer.log_every=15",
    "trainer.eval_every=30",
    "trainer.progress=false",
    "checkpoint=none",
)


def _with_async(cfg, **node):
    with open_dict(cfg):
        cfg.algorithm = OmegaConf.create(
            {"_target_": "jdo.asynchrony.algorithm", "cluster": None, **node}
        )
    return cfg


def test_time_and_staleness_come_from_the_schedule(make_cfg, tmp_path):
    overrides = ("cluster=cloud", "cluster/compute=fixed", "cluster/stragglers=slow_worker")
    cfg = _with_async(make_cfg(*RUN, *overrides, "cluster.stragglers.factor=3"), mode="async")
    summary = run(cfg, output_dir=str(tmp_path))
    per_worker = jax.tree.leaves(jax.device_get(summary["state"].params))
    nbytes = sum(x[0].size * x.dtype.itemsize for x in per_worker)
    cluster = cluster_from_config(cfg.cluster, 4)
    events = asynchrony.schedule(cluster, 4, 30, "async", message_bytes=nbytes)
    assert summary["time/total"] == pytest.approx(events[-1].time, rel=1e-7)
    staleness = [e.staleness for e in events]
    assert summary["staleness/mean"] == pytest.approx(np.mean(staleness), rel=1e-6)
    assert summary[f"staleness/{max(staleness)}"] == staleness.count(max(staleness)) > 0
    assert summary["asynchrony/updates"] == 30
    assert summary["asynchrony/gradients"] == len(events)
    assert summary["bytes/wire_total"] == 2 * len(events) * nbytes  # pushes + pulls
    assert summary["bytes/wire_per_update"] == 2 * len(events) * nbytes / 30
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["asynchrony/updates"] for x in lines] == [15, 30]
    assert lines[0]["time/total"] < lines[1]["time/total"]
    assert summary["train/loss"] < lines[0]["train/loss"] * 1.5 and np.isfinite(
        summary["train/loss"]
    )


def test_without_a_cluster_the_config_error_names_the_key(make_cfg):
    with pytest.raises(ConfigError, match="algorithm.cluster"):
        run(_with_async(make_cfg(*RUN), mode="ssp", staleness=1))
