"""A run on a simulated cluster: the cluster from its config node, the compute profile of the
step on this device, and the wrapper that carries every worker's clock in the algorithm state
(:mod:`jdo.system.clock`), so a checkpoint holds the clock and a resumed run continues it.
A simulated asynchronous parameter server (:mod:`jdo.asynchrony`) carries its own clock, read
off its event schedule: it is bound to the run's length instead of wrapped.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from jdo import asynchrony
from jdo._axis import WORKERS
from jdo.algorithms import Algorithm, gossip_simulation_of
from jdo.checks import ArgumentError
from jdo.system import Cluster, StepProfile, clock, time_step
from jdo.train.builder import instantiate
from jdo.train.config import ConfigError
from jdo.train.experiment import Experiment
from jdo.train.program import worker_step


def cluster_from_config(node: Mapping | None, workers: int) -> Cluster | None:
    """The ``cluster`` config node as a :class:`~jdo.system.Cluster` sized for ``workers``
    (``nodes: null`` derives the node count); None when the node is empty (no cluster). Its
    links, compute model and stragglers are made first, so a bad value is reported under its
    own key (``cluster.inter.bandwidth_Bps``)."""
    if node is None or not node:
        return None
    if "_target_" not in node:
        raise ConfigError(
            "cluster",
            "has no _target_: choose a cluster first (cluster=datacenter, cloud, edge or "
            "measured), then its stragglers or compute (cluster/stragglers=...)",
        )
    parts = {
        key: instantiate(node[key], f"cluster.{key}")
        for key in ("intra", "inter", "compute", "stragglers")
        if isinstance(node.get(key), Mapping) and "_target_" in node[key]
    }
    resolved = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    rest = OmegaConf.create({k: v for k, v in resolved.items() if k not in parts})
    cluster = instantiate(rest, "cluster", **parts)
    if not isinstance(cluster, Cluster):
        raise ConfigError(
            "cluster", f"must make a jdo.system.Cluster, got {type(cluster).__name__}"
        )
    try:
        return cluster.for_workers(workers)
    except ArgumentError as e:
        raise ConfigError(f"cluster.{e.argument}", str(e)) from None


def with_clock(cluster: Cluster, compute_s, axis_name: str = WORKERS):
    """``Algorithm -> Algorithm``: the state gains the worker's clock; every step advances it
    (compute, then the step's collectives) and reports it as the metric ``clock`` (the
    ``[9]`` vector of :func:`jdo.system.clock.as_vector`). ``compute_s``: seconds per step of
    each worker (``[W]``) before stragglers."""
    compute_s = np.asarray(compute_s, np.float32)

    def wrap(algorithm: Algorithm) -> Algorithm:
        clocked_step = clock.clocked(algorithm.step, cluster, axis_name)

        def init(params, key):
            return clock.Clocked(algorithm.init(params, key), clock.start(compute_s, axis_name))

        def step(state, batch, key):
            (inner, metrics), new_clock = clocked_step(state.clock, state.inner, batch, key)
            return clock.Clocked(inner, new_clock), {**metrics, "clock": clock.as_vector(new_clock)}

        return Algorithm(init, step, lambda state: algorithm.params(state.inner))

    return wrap


def profile_step(
    exp: Experiment, workers: int, batch_size: int | None, needs: str | None, repeats: int = 5
) -> StepProfile:
    """What the cluster's compute model needs of one worker's step on this device
    (``needs``: ``"seconds"``, ``"flops"`` or None). The step of all ``workers`` is compiled
    ``vmap``-lifted on one device: ``seconds`` is the median wall time of ``repeats`` calls
    after a warm-up, divided by the workers; ``flops`` XLA's cost analysis, likewise."""
    if needs is None:
        return StepProfile()
    algo = exp.algorithm
    keys = jax.random.split(jax.random.key(0), workers)
    state = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS))(exp.params, keys)
    data = tuple(exp.data) if exp.data is not None else ()
    step = functools.partial(worker_step, algo, batch_size)
    lifted = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None), axis_name=WORKERS))
    args = (state, data, jax.random.key(1), np.int32(0))
    compiled = lifted.lower(*args).compile()
    if needs == "flops":
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return StepProfile(flops=float(analysis.get("flops", 0.0)) / workers)
    return StepProfile(seconds=time_step(compiled, args, repeats) / workers)


def clock_for(
    cluster: Cluster, exp: Experiment, workers: int, batch_size: int | None
) -> Callable[[Algorithm], Algorithm]:
    """The clock wrapper of a run on ``cluster``: each worker's compute seconds from the
    cluster's compute model (profiling the step here if it needs to)."""
    profile = profile_step(exp, workers, batch_size, cluster.compute.needs)
    compute_s = [cluster.compute_seconds(w, profile) for w in range(workers)]
    return with_clock(cluster, compute_s)


def clocked_experiment(
    exp: Experiment, cluster: Cluster | None, workers: int, batch_size: int | None, steps: int
) -> tuple[Experiment, Callable[[Algorithm], Algorithm] | None]:
    """``(exp, clock)`` of a run. An algorithm that carries its own clock, read off a simulated
    event schedule (an asynchronous parameter server, :mod:`jdo.asynchrony`; AD-PSGD,
    :func:`jdo.algorithms.ad_psgd`), is bound to ``steps`` updates, its compute profiled on
    its synchronous stand-in when the cluster's compute model needs one, and gets no clock
    wrapper; any other gets :func:`clock_for` (None without a cluster)."""
    simulated = asynchrony.simulation_of(exp.algorithm) or gossip_simulation_of(exp.algorithm)
    if simulated is None:
        return exp, clock_for(cluster, exp, workers, batch_size) if cluster else None
    needs = simulated.cluster.compute.needs if simulated.cluster is not None else None
    profile = None
    if needs is not None:
        stand_in = dataclasses.replace(exp, algorithm=simulated.stand_in(workers))
        profile = profile_step(stand_in, workers, batch_size, needs)
    return dataclasses.replace(exp, algorithm=simulated.bind(steps, profile)), None
