"""The cluster config group: presets compose and instantiate (no training here)."""

import os

import pytest
from hydra.utils import instantiate

import jdo.system as system
from tests.conftest import CONF, compose_cfg

PRESETS = sorted(
    f[:-5]
    for f in os.listdir(os.path.join(CONF, "cluster"))
    if f.endswith(".yaml") and f not in ("none.yaml", "measured.yaml")  # measured: its own test
)
STRAGGLERS = {
    "none": type(None),
    "slow_worker": system.SlowWorker,
    "shifted_exponential": system.ShiftedExponential,
    "lognormal": system.Lognormal,
    "pauses": system.Pauses,
}


def _has_default() -> bool:
    with open(os.path.join(CONF, "config.yaml"), encoding="utf-8") as f:
        return any(line.strip().startswith("- cluster:") for line in f)


# `cluster=X` once config.yaml's defaults list has `- cluster: none`; `+cluster=X` before.
PICK = "cluster=" if _has_default() else "+cluster="


def test_none_is_no_cluster():
    cfg = compose_cfg(PICK + "none")
    assert "cluster" in cfg and cfg.cluster is None


def test_the_issue_command_composes_and_instantiates():
    cfg = compose_cfg(
        "algorithm=dpsgd", "topology=ring", PICK + "cloud", "cluster/stragglers=shifted_exponential"
    )
    cluster = instantiate(cfg.cluster)
    assert isinstance(cluster, system.Cluster)
    assert cluster.stragglers == system.shifted_exponential(1.0, 0.5)
    assert cluster.workers_per_node == 1 and cluster.intra is None and cluster.nodes is None
    assert cluster.inter == system.Link(1.0e-4, 3.125e9)
    assert cluster.for_workers(cfg.workers).size == cfg.workers


def test_stragglers_and_compute_replaced_from_the_command_line():
    slow = "{_target_:jdo.system.slow_worker,workers:[0],factor:10}"
    cfg = compose_cfg(PICK + "datacenter", "++cluster.stragglers=" + slow)
    assert instantiate(cfg.cluster).stragglers == system.slow_worker([0], 10.0)
    cfg = compose_cfg(PICK + "edge", "cluster/compute=fixed", "cluster.compute.seconds=0.5")
    assert instantiate(cfg.cluster).compute == system.fixed(0.5)
    # a dict override merges into the node: null it first to replace it whole inline
    fixed = "{_target_:jdo.system.fixed,seconds:0.25}"
    cfg = compose_cfg(PICK + "cloud", "cluster.compute=null", "++cluster.compute=" + fixed)
    assert instantiate(cfg.cluster).compute == system.fixed(0.25)


@pytest.mark.parametrize("compute", ["fixed", "measured", "h100", "a10", "orin_nano"])
def test_every_compute_model(compute):
    cfg = compose_cfg(PICK + "cloud", f"cluster/compute={compute}")
    model = instantiate(cfg.cluster).compute
    assert model.needs == {"fixed": None, "measured": "seconds"}.get(compute, "flops")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("stragglers", sorted(STRAGGLERS))
def test_every_preset_with_every_straggler_model(preset, stragglers):
    cfg = compose_cfg(PICK + preset, f"cluster/stragglers={stragglers}", "workers=16", "seed=3")
    cluster = instantiate(cfg.cluster).for_workers(cfg.workers)
    assert isinstance(cluster.stragglers, STRAGGLERS[stragglers])
    assert cluster.seed == 3 and cluster.size == 16
    assert cluster.compute.needs in (None, "seconds", "flops")
    assert cluster.collective_time("all-reduce", 4e6, 16) > 0


def test_preset_figures():
    dc = instantiate(compose_cfg(PICK + "datacenter").cluster).for_workers(16)
    assert dc.workers_per_node == 8 and dc.nodes == 2
    assert dc.intra.bandwidth_Bps == 450e9 and dc.inter.bandwidth_Bps == 400e9 / 8  # 400 Gb/s
    cloud = instantiate(compose_cfg(PICK + "cloud").cluster)
    assert cloud.inter.bandwidth_Bps == 25e9 / 8  # 25 Gb/s
    edge = instantiate(compose_cfg(PICK + "edge").cluster)
    assert len(set(edge.speeds)) > 1  # heterogeneous devices


def test_a_mismatched_nodes_override_is_refused():
    cfg = compose_cfg(PICK + "datacenter", "cluster.nodes=3")
    with pytest.raises(ValueError, match="nodes x workers_per_node must equal"):
        instantiate(cfg.cluster).for_workers(cfg.workers)
