"""The planner: which algorithm reaches a target loss first on a simulated cluster.

    python -m experiments.plan task=logistic workers=16 cluster=cloud --target 0.36
    jdo-plan task=digits model=mlp workers=16 cluster=edge --target 0.3 --run-top 3

For every algorithm of a set (:data:`ALGORITHMS`, ``--algorithms``) it

1. **predicts the simulated seconds per step** with the run's own clock model
   (:mod:`jdo.system.clock`): the clocked step (:func:`jdo.train.clocked.clock_for`: compute
   from the cluster's compute model, e.g. XLA's FLOP count, then every collective priced on the
   cluster's links) is stepped alone for :func:`probe_steps` steps, a whole number of the
   algorithm's communication periods (local SGD's H, DiLoCo's H, gossip every k), and the
   latest worker's clock is divided by them. Stragglers are drawn with the run's own seeds
   (``fold_in(seed, worker, step)``), so the prediction is what a run of that length measures,
   a Monte-Carlo estimate of the expected seconds per step from at least 64 draws per worker;
   without stragglers it is exact for any run whose length is a multiple of the period;
2. **counts bytes per step** from the step's compiled HLO, as the runner does
   (``bytes/step``: a communicating step; ``bytes/step_quiet``: the others), and reports their
   mean over the period (the communicating steps are those whose clock paid for a collective);
3. **runs a short pilot** through the real runner (:func:`jdo.train.run`, seeds fixed,
   ``checkpoint=none``) and fits its loss curve ``loss(s) = a + b exp(-c s)`` over steps ``s``
   (:func:`fit_curve`); the predicted steps to the target are where the fit crosses it
   (never, if the target is below the fitted floor ``a``), or the pilot's own first crossing
   if it got there. The curve in steps does not depend on the cluster (the clock only observes
   a run), so the predicted time to target is steps x predicted seconds per step;
4. ranks the algorithms by predicted time to target and says which it recommends and why.

``--run-top K`` runs the K best to the target for ``--max-steps`` steps (the runner has no
early stop) and reads the time the target was first crossed from ``metrics.jsonl``
(``time/total``, the latest worker's clock) and prints predicted vs achieved rank and time,
with Spearman's rank correlation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

# name -> Hydra overrides. Plain SGD-style settings come from the user's overrides.
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "allreduce_sgd": ("algorithm=allreduce_sgd",),
    "local_sgd_h4": ("algorithm=local_sgd", "algorithm.every=4"),
    "local_sgd_h16": ("algorithm=local_sgd", "algorithm.every=16"),
    "dpsgd_ring": ("algorithm=dpsgd", "topology=ring"),
    "choco_sgd_topk": (
        "algorithm=choco_sgd",
        "topology=ring",
        "compression=top_k",
        "compression.ratio=0.01",
        "algorithm.gamma=0.05",
    ),
    "compressed_sgd_topk": (
        "algorithm=compressed_sgd",
        "compression=top_k",
        "compression.ratio=0.01",
    ),
    "powersgd": ("algorithm=powersgd",),
    "diloco": ("algorithm=diloco",),
    "parameter_server": ("algorithm=parameter_server",),
}
DEFAULT_SET = (
    "allreduce_sgd",
    "local_sgd_h4",
    "local_sgd_h16",
    "dpsgd_ring",
    "choco_sgd_topk",
    "diloco",
)
BASELINE = "allreduce_sgd"  # what the recommendation's saving is measured against
PERIOD_KEYS = ("every", "sync_every", "gossip_every", "local_steps", "group_every")
MIN_PROBE = 64  # steps the clock is stepped for at least (straggler draws per worker)


class PlanError(ValueError):
    """Bad planner input: the message is one line naming the option."""


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def compose(overrides: Sequence[str]):
    """The config ``jdo-train <overrides>`` runs (``pkg://jdo.conf``, as the CLI composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import jdo.conf  # noqa: F401 - the ${jdo_run_id:} resolver

    with initialize_config_module("jdo.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def check_algorithms(names: Sequence[str]) -> tuple[str, ...]:
    """The algorithm names, checked against :data:`ALGORITHMS`."""
    names = tuple(n.strip() for n in names if n.strip())
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
        what = f"unknown algorithm {unknown[0]!r}" if unknown else "no algorithm given"
        raise PlanError(f"--algorithms: {what}; choose from {', '.join(ALGORITHMS)}")
    if len(set(names)) != len(names):
        raise PlanError("--algorithms: an algorithm is named twice")
    return names


def check_base(overrides: Sequence[str]) -> tuple[str, ...]:
    """The user's Hydra overrides: the algorithm set chooses ``algorithm``, ``topology`` and
    ``compression``; the planner chooses the run length and the logging cadence."""
    owned = ("algorithm", "trainer.steps", "trainer.log_every", "trainer.eval_every")
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item:
            raise PlanError(f"{item}: not a Hydra override (key=value) nor a known option")
        if key in owned or key.startswith("algorithm."):
            raise PlanError(f"{key}: set by the planner; choose algorithms with --algorithms")
    return tuple(overrides)


def run_overrides(base: Sequence[str], name: str, steps: int, every: int) -> list[str]:
    """What one run of ``name`` composes: the user's overrides, the algorithm's, the run's
    length and cadence (log and evaluate every ``every`` steps), no checkpoint, no bar."""
    return [
        *base,
        *ALGORITHMS[name],
        f"trainer.steps={steps}",
        f"trainer.log_every={every}",
        f"trainer.eval_every={every}",
        "trainer.progress=false",
        "checkpoint=none",
    ]


def period_of(cfg) -> int:
    """The algorithm's communication period: the lcm of its ``every``-like settings
    (:data:`PERIOD_KEYS`; 1 for an algorithm that communicates every step)."""
    node = cfg.get("algorithm") or {}
    values = [node.get(k) for k in PERIOD_KEYS if k in node]
    return math.lcm(1, *[int(v) for v in values if isinstance(v, int) and v > 0])


def probe_steps(period: int) -> int:
    """Steps the clock is stepped for: the smallest multiple of ``period`` >= 64."""
    return period * max(1, -(-MIN_PROBE // period))


# ----------------------------------------------------------------------------------------------
# Seconds and bytes per step
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One step of an algorithm on a cluster (seconds simulated; bytes per worker)."""

    seconds_per_step: float
    bytes_per_step: float  # mean over the period
    bytes_communicating: int  # the runner's bytes/step
    bytes_quiet: int  # the runner's bytes/step_quiet
    period: int
    probe_steps: int
    compute_s: float  # the slowest worker's compute seconds per step (no stragglers)
    comm_s: float  # mean comm seconds per step (the clock's split)


def _built(cfg):
    """``(exp, clock, cluster, container)`` of a config, as :func:`jdo.train.run` builds
    them."""
    from omegaconf import OmegaConf

    from jdo.train.builder import build
    from jdo.train.clocked import clocked_experiment, cluster_from_config
    from jdo.train.config import validate

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    validate(container)
    cluster = cluster_from_config(cfg.get("cluster"), container["workers"])
    if cluster is None:
        raise PlanError("cluster: the planner needs a cluster (cluster=datacenter, cloud, edge)")
    exp = build(cfg, cluster=cluster)
    trainer = container["trainer"]
    exp, clock = clocked_experiment(
        exp, cluster, container["workers"], trainer["batch_size"], trainer["steps"]
    )
    if clock is None:
        raise PlanError(
            f"algorithm: {cfg.algorithm._target_} runs on its own event schedule; the planner "
            "prices synchronous algorithms"
        )
    return exp, clock, cluster, container


def step_cost(cfg) -> StepCost:
    """Predicted seconds and bytes per step of the run ``cfg`` describes (see the module
    docstring): its clocked step stepped alone for :func:`probe_steps` steps."""
    import jax

    from jdo.system import clock as sim_clock

    exp, clock, cluster, container = _built(cfg)
    workers, batch_size = container["workers"], container["trainer"]["batch_size"]
    period = period_of(cfg)
    steps = probe_steps(period)
    algo = exp.algorithm._replace(cohort=None)
    vectors = np.asarray(_clock_trace(clock(algo), exp, workers, batch_size, steps, cfg.seed))
    final = sim_clock.times(vectors[-1])
    comm = _comm_per_step(vectors)
    busy, quiet = _traffic(algo, exp, workers, batch_size, cluster)
    talking = int(np.count_nonzero(comm > 0))
    return StepCost(
        seconds_per_step=final["time/total"] / steps,
        bytes_per_step=(talking * busy + (steps - talking) * quiet) / steps,
        bytes_communicating=busy,
        bytes_quiet=quiet,
        period=period,
        probe_steps=steps,
        compute_s=float(np.max(vectors[0][:, sim_clock.VECTOR.index("compute_hi")])),
        comm_s=final["time/comm"],
    )


def _clock_trace(algo, exp, workers: int, batch_size, steps: int, seed: int):
    """``[steps, W, 9]``: every worker's clock (:func:`jdo.system.clock.as_vector`) after
    each of ``steps`` steps of ``algo`` (clocked), lifted with ``vmap`` on one device and keyed
    as the runner keys them (:func:`jdo.train.program.worker_step`)."""
    import jax
    import jax.numpy as jnp

    from jdo._axis import WORKERS
    from jdo.train.program import worker_step

    init_key, key = jax.random.split(jax.random.key(seed))
    keys = jax.random.split(init_key, workers)
    init = jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS)
    step = jax.vmap(
        functools.partial(worker_step, algo, batch_size),
        in_axes=(0, 0, None, None),
        axis_name=WORKERS,
    )
    data = tuple(exp.data) if exp.data is not None else ()

    @jax.jit
    def trace(params, keys, data, key):
        def body(state, t):
            state, metrics = step(state, data, key, t)
            return state, metrics["clock"]

        return jax.lax.scan(body, init(params, keys), jnp.arange(steps, dtype=jnp.int32))[1]

    return trace(exp.params, keys, data, key)


def _comm_per_step(vectors: np.ndarray) -> np.ndarray:
    """``[steps]``: the latest worker's comm seconds spent in each step."""
    from jdo.system import clock as sim_clock

    i = sim_clock.VECTOR.index
    comm = vectors[:, :, i("comm_hi")].astype(np.float64) + vectors[:, :, i("comm_lo")]
    return np.diff(comm.max(axis=1), prepend=0.0)


def _traffic(algo, exp, workers: int, batch_size, cluster) -> tuple[int, int]:
    """``(communicating, quiet)`` wire bytes one worker sends per step, read from the step's
    HLO as :func:`jdo.train.program.compile_program` reads them."""
    import jax
    import jax.numpy as jnp

    from jdo import comm
    from jdo._axis import WORKERS
    from jdo.train.program import step_traffic, worker_step

    one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
    keys = jax.random.split(jax.random.key(0), workers)
    state = jax.eval_shape(
        jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS), exp.params, keys
    )
    data = tuple(exp.data) if exp.data is not None else ()
    hlo = comm.worker_hlo(
        functools.partial(worker_step, algo, batch_size),
        workers,
        one(state),
        one(data),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
        in_axes=(0, 0, None, None),
        platform=jax.default_backend(),
    )
    ops = lambda which: comm.hlo_collective_ops(hlo, which, num_devices=workers)
    busy = sum(step_traffic(ops("max"), cluster)[0].values())
    quiet = sum(step_traffic(ops("min"), cluster)[0].values())
    return int(busy), int(quiet)
