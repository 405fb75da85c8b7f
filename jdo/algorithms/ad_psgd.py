"""AD-PSGD: asynchronous decentralized SGD, stepped one wave of its simulated events at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.asynchrony.gossip import GossipSchedule, gossip_schedule, neighbours, pairwise_average
from jdo.system import Cluster, StepProfile, clock
from jdo.topology import Topology


class ADPSGDState(NamedTuple):
    params: Any  # x_i: the live model, which neighbours average into
    read: Any  # x̂_i: the model read when the gradient in flight started
    opt_state: optax.OptState
    step: jax.Array  # waves done (int32)
    version: jax.Array  # events that touched x_i (int32)
    read_version: jax.Array  # the version x̂_i was read at (int32)
    comm: clock.Time  # seconds this worker spent exchanging models (as the active side)


class _Tables(NamedTuple):
    """What a step looks up, per wave (host numpy; constants in the compiled step)."""

    partners: np.ndarray  # [waves, W] int32
    active: np.ndarray  # [waves, W] bool
    time_hi: np.ndarray  # [waves] float32: the wave's time as hi + lo
    time_lo: np.ndarray
    events: np.ndarray  # [waves] float32
    staleness: np.ndarray  # [waves] float32: mean staleness of the wave's events
    message_s: np.ndarray  # [W, W] float32: seconds of an exchange between i and j


def _tables(schedule: GossipSchedule, message_s: np.ndarray) -> _Tables:
    t = schedule.wave_time()
    hi = t.astype(np.float32)
    sizes = schedule.wave_sizes()
    stale = np.bincount(schedule.wave, schedule.staleness, schedule.num_waves)
    return _Tables(
        schedule.partners().astype(np.int32),
        schedule.active(),
        hi,
        (t - hi.astype(np.float64)).astype(np.float32),
        sizes.astype(np.float32),
        (stale / np.maximum(sizes, 1)).astype(np.float32),
        message_s.astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class GossipSimulation:
    """The settings :func:`ad_psgd` closes over, so the runner can bind the horizon
    (``trainer.steps``) and the compute profile after building (:meth:`bind`); find it with
    :func:`gossip_simulation_of`."""

    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    topology: Topology
    cluster: Cluster | None
    compute_seconds: Any
    seed: int
    axis_name: str

    def schedule(self, num_waves: int, message_bytes: float, profile=None) -> GossipSchedule:
        """The host-side event schedule a run with messages of ``message_bytes`` steps through
        (:func:`jdo.asynchrony.gossip_schedule`)."""
        return gossip_schedule(
            self.topology,
            self.cluster,
            num_waves=num_waves,
            message_bytes=message_bytes,
            compute_seconds=self.compute_seconds,
            profile=profile,
            seed=self.seed,
        )

    def bind(self, num_updates: int, profile: StepProfile | None = None) -> Algorithm:
        """The algorithm over ``num_updates`` waves (the horizon), with the
        :class:`~jdo.system.StepProfile` a ``measured`` or ``flops`` compute model needs."""
        bound = _Bound(self, checks.positive_int("horizon", num_updates), profile, {})
        return Algorithm(bound.init, bound.step)

    def stand_in(self, num_workers: int) -> Algorithm:
        """The same step with unit compute times (no profile needed), which the runner
        profiles for a ``measured`` or ``flops`` compute model before :meth:`bind`."""
        del num_workers  # the schedule is sized when the step is traced
        return dataclasses.replace(self, cluster=None, compute_seconds=None).bind(1)


def gossip_simulation_of(algorithm: Algorithm) -> GossipSimulation | None:
    """The :class:`GossipSimulation` behind an algorithm made by :func:`ad_psgd` (None for any
    other): the runner rebinds its horizon and profile from it."""
    owner = getattr(algorithm.step, "__self__", None)
    return owner.sim if isinstance(owner, _Bound) else None


@dataclasses.dataclass(frozen=True)
class _Bound:
    sim: GossipSimulation
    horizon: int
    profile: StepProfile | None
    tables: dict  # message bytes -> _Tables

    def tables_for(self, params) -> _Tables:
        """Made (once per model size) when the step is traced: messages carry the model."""
        nbytes = clock.tree_bytes(params)
        if nbytes not in self.tables:
            sched = self.sim.schedule(self.horizon, nbytes, self.profile)
            message_s = _message_seconds(self.sim.topology, self.sim.cluster, nbytes)
            self.tables[nbytes] = _tables(sched, message_s)
        return self.tables[nbytes]

    def init(self, params, key):
        del key
        zero = jnp.zeros((), jnp.int32)
        opt_state = self.sim.optimizer.init(params)
        return ADPSGDState(params, params, opt_state, zero, zero, zero, clock.zero_time())

    def step(self, state, batch, key):
        sim, tab, horizon = self.sim, self.tables_for(state.params), self.horizon
        me = axis_index(sim.axis_name)
        beyond = state.step >= horizon
        wave = jnp.minimum(state.step, horizon - 1)
        partner = jnp.where(beyond, me, jnp.asarray(tab.partners)[wave, me])
        active = jnp.asarray(tab.active)[wave, me] & ~beyond
        # 1. the gradient at the model read when it started (the stale copy x̂_i)
        grad_fn = jax.value_and_grad(sim.loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(state.read, batch, key)
        # 2. the pairwise average with the partner (an idle worker keeps its model)
        mixed = pairwise_average(state.params, partner, sim.topology, sim.axis_name)
        # 3. the active worker applies its gradient, then reads its new model
        updates, opt_state = sim.optimizer.update(grads, state.opt_state, mixed)
        stepped = optax.apply_updates(mixed, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
        params = keep(stepped, mixed)
        version = state.version + ((partner != me) | active).astype(jnp.int32)
        exchange_s = jnp.where(active, jnp.asarray(tab.message_s)[me, partner], 0.0)
        new = ADPSGDState(
            params,
            keep(params, state.read),
            keep(opt_state, state.opt_state),
            state.step + 1,
            version,
            jnp.where(active, version, state.read_version),
            clock.add(state.comm, exchange_s),
        )
        now = clock.Time(jnp.asarray(tab.time_hi)[wave], jnp.asarray(tab.time_lo)[wave])
        metrics = {
            "loss": jnp.where(beyond, jnp.nan, loss),
            **aux,
            "events": jnp.asarray(tab.events)[wave],
            "staleness": jnp.asarray(tab.staleness)[wave],
            "clock": _clock_vector(now, new.comm, new.step),
        }
        return new, metrics


@register("ad_psgd")
def ad_psgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    *,
    cluster: Cluster | None = None,
    compute_seconds: float | Sequence[float] | None = None,
    profile: StepProfile | None = None,
    seed: int = 0,
    horizon: int = 10_000,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Asynchronous decentralized parallel SGD (Lian, Zhang, Zhang & Liu, ICML 2018,
    "Asynchronous Decentralized Parallel Stochastic Gradient Descent"), simulated
    deterministically on the cluster clock (:func:`jdo.asynchrony.gossip_schedule`).

    Each worker repeatedly computes a gradient on the model :math:`\hat x_i` it read when it
    started; when it finishes, at its event's time in the schedule, it averages with one
    neighbour j drawn uniformly at random and applies its (stale) gradient:

    .. math:: x_i, x_j \leftarrow \tfrac12 (x_i + x_j), \qquad
              x_i \leftarrow x_i + \mathrm{opt}(\nabla f_i(\hat x_i; \xi_i)), \qquad
              \hat x_i \leftarrow x_i,

    i.e. :math:`X \leftarrow W_k X - \gamma\,\partial F(\hat X_k)` with :math:`W_k =
    I - (e_i - e_j)(e_i - e_j)^\top / 2` symmetric and doubly stochastic. Neighbours averaging
    with i while it computes change :math:`x_i` but not :math:`\hat x_i`: that is the
    staleness.

    **One step = one wave**: a run of consecutive events with disjoint pairs (a random
    matching), applied together; the waves in order are exactly the events in order. The
    optimizer state advances only on a worker's own events. Every step computes every worker's
    gradient (an idle worker's is discarded) and runs every ppermute round of the topology's
    exchange plan (2 on a ring), each worker keeping what came from its partner: the compiled
    bytes per step are those of a D-PSGD mixing step, more than the one message each way an
    asynchronous exchange sends.

    Metrics: ``loss`` (at :math:`\hat x_i`), ``events`` and ``staleness`` (the wave's event
    count and mean staleness), and ``clock``, the simulated time in
    :func:`jdo.system.clock.as_vector`'s format (``now``: the wave's last event; ``comm``: this
    worker's exchange seconds as the active side; ``compute = now − comm``: an AD-PSGD worker
    never waits), so the runner must not wrap it in the synchronous clock. A step past
    ``horizon`` waves has no schedule: nothing changes and its loss is NaN, so the runner stops.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` for one worker.
      optimizer: the local optax step (the paper: ``optax.sgd(γ)``).
      topology: an undirected graph over the workers (ring, torus, star, complete, ...); only
        its links are used: every exchange is a 1/2–1/2 average.
      cluster: the simulated cluster whose compute model, stragglers and links time the
        events; None: one second per gradient, free messages.
      compute_seconds: each worker's seconds per gradient before stragglers (one number or
        ``[W]``); default: the cluster's compute model.
      profile: the :class:`~jdo.system.StepProfile` a ``measured`` or ``flops`` compute model
        needs (the runner measures it and rebinds: :func:`gossip_simulation_of`).
      seed: the neighbour draws.
      horizon: waves the schedule covers: at least the steps of the run.
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` whose state is :class:`ADPSGDState`.
    """
    checks.function("loss_fn", loss_fn)
    checks.optimizer("optimizer", optimizer)
    neighbours(topology)  # an undirected graph
    if cluster is not None:
        if not isinstance(cluster, Cluster):
            raise checks.WrongType(
                "cluster", f"must be a jdo.system.Cluster or None, got {type(cluster).__name__}"
            )
        cluster = cluster.for_workers(topology.n)
    if compute_seconds is not None:  # checks it now, on a one-wave prefix
        gossip_schedule(topology, num_waves=1, compute_seconds=compute_seconds)
    sim = GossipSimulation(
        loss_fn,
        optimizer,
        topology,
        cluster,
        compute_seconds,
        checks.integer("seed", seed, minimum=0),
        axis_name,
    )
    return sim.bind(horizon, profile)


def _message_seconds(topology: Topology, cluster: Cluster | None, nbytes: int) -> np.ndarray:
    out = np.zeros((topology.n, topology.n))
    if cluster is not None:
        for i, js in enumerate(neighbours(topology)):
            for j in js:
                out[i, j] = cluster.message_time(i, j, nbytes)
    return out


def _clock_vector(now: clock.Time, comm: clock.Time, steps) -> jax.Array:
    """The simulated time in :func:`jdo.system.clock.as_vector`'s format: compute is the time
    not spent exchanging (``now − comm``), wait 0."""
    compute = clock.add(clock.add(now, -comm.hi), -comm.lo)
    zero = clock.zero_time()
    state = clock.ClockState(now, compute, comm, zero, jnp.zeros((), jnp.float32), steps)
    return clock.as_vector(state)
