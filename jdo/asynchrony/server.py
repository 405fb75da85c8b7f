r"""The simulated asynchronous parameter server: an :class:`~jdo.algorithms.Algorithm` that
replays an event schedule inside SPMD, one runner step per applied version.

Each worker holds the server's parameters :math:`w_t` and optimizer state (replicated: every
worker applies the same update) and its pulled copy :math:`w_{\tau_i}`, the version its next
gradient is computed on. Update :math:`t` (:math:`w_t \to w_{t+1}`), for the set :math:`A_t`
of workers whose gradients the schedule applies then:

1. every worker computes :math:`g_i = \nabla f(w_{\tau_i}; \xi_i)` on its own batch;
2. each is corrected for its staleness :math:`\tau_i = t - \text{read}_i` (optional
   :func:`~jdo.asynchrony.dc_asgd`, :func:`~jdo.asynchrony.staleness_aware_lr`);
3. :math:`g = \frac{1}{|A_t|}\sum_{i \in A_t} g_i` (a masked all-reduce), and
   :math:`(u, s) \leftarrow \mathrm{opt}(g, s)`, :math:`w_{t+1} = w_t + u` (no change when
   :math:`A_t` is empty, e.g. every gradient was dropped);
4. the workers that read version :math:`t + 1` copy it: :math:`w_{\tau_i} \leftarrow w_{t+1}`.

A worker's pulled copy is all the history it needs (the version it read stays in it until its
gradient is applied), so memory is two copies of the parameters per worker whatever the
staleness, where a ring buffer of versions would need :math:`\tau_{max} + 1`.

When every gradient arrives at once (equal compute times) every update averages all workers'
fresh gradients: synchronous SGD, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_size
from jdo.algorithms.base import Algorithm, LossFn
from jdo.asynchrony.corrections import corrections
from jdo.asynchrony.plan import Plan, make_plan
from jdo.asynchrony.schedule import Event, check_mode, simulate
from jdo.comm import collectives


class AsyncPSState(NamedTuple):
    """One worker's state.

    Attributes:
      params: the server's parameters :math:`w_t` (the same on every worker).
      opt_state: the server's optimizer state (the same on every worker).
      pulled: this worker's pulled copy :math:`w_{\\tau_i}`.
      correction_state: the staleness corrections' state.
      version: updates applied so far, :math:`t` (int32; indexes the schedule).
    """

    params: Any
    opt_state: optax.OptState
    pulled: Any
    correction_state: optax.OptState
    version: jax.Array


def replay(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    plan: Plan,
    *,
    lr_scaling: str | None = None,
    dc_lambda: float | None = None,
    axis_name: str = WORKERS,
) -> Algorithm:
    """The simulated parameter server replaying ``plan`` (:func:`jdo.asynchrony.make_plan` of an
    event list; see the module docstring). Steps past the plan's last update change nothing.
    Metrics: ``loss`` (of each worker's gradient), ``asynchrony`` (the plan's running
    statistics, :func:`jdo.asynchrony.stats_record`) and, when the plan has timelines,
    ``clock`` (the simulated clock, as :func:`jdo.system.clock.as_vector`)."""
    checks.function("loss_fn", loss_fn)
    checks.optimizer("optimizer", optimizer)
    pre = corrections(dc_lambda, lr_scaling)
    return Algorithm(_init(optimizer, pre), _step(loss_fn, optimizer, pre, plan, axis_name))


def _init(optimizer, pre):
    def init(params, key):
        del key
        version = jnp.zeros((), jnp.int32)
        return AsyncPSState(params, optimizer.init(params), params, pre.init(params), version)

    return init


def _step(loss_fn, optimizer, pre, plan: Plan, axis_name: str):
    table = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    table = {k: v for k, v in table.items() if v is not None}
    horizon = plan.num_updates

    def step(state, batch, key):
        me, u = collectives.worker_index(axis_name), state.version
        row = {k: jnp.asarray(v)[jnp.minimum(u, horizon - 1)] for k, v in table.items()}
        inside = u < horizon
        applied = row["applied"][me] & inside
        # 1. the gradient on the pulled copy, 2. its staleness corrections
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.pulled, batch, key)
        grads, correction_state = pre.update(
            grads,
            state.correction_state,
            state.params,
            staleness=row["staleness"][me],
            stale_params=state.pulled,
        )
        # 3. the masked mean over the applied gradients, then the optimizer
        masked = jax.tree.map(lambda g: jnp.where(applied, g, jnp.zeros_like(g)), grads)
        total, count = collectives.sum((masked, applied.astype(jnp.float32)), axis_name)
        mean = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), total)
        updates, opt_state = optimizer.update(mean, state.opt_state, state.params)
        stepped = (optax.apply_updates(state.params, updates), opt_state)
        params, opt_state = _select(count > 0, stepped, (state.params, state.opt_state))
        # 4. the workers that read the new version copy it
        pulled = _select(row["pull"][me] & inside, params, state.pulled)
        metrics = {"loss": loss, **aux, "asynchrony": row["stats"]}
        if "clock" in row:
            metrics["clock"] = row["clock"][me]
        new = AsyncPSState(params, opt_state, pulled, correction_state, u + 1)
        return new, metrics

    return step


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


@dataclasses.dataclass(frozen=True)
class SimulatedPS:
    """The settings :func:`algorithm` closes over, so the runner can bind the horizon
    (``trainer.steps``) and the compute profile after building (:meth:`bind`)."""

    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    mode: str
    staleness: int | None
    k: int | None
    cluster: Any
    lr_scaling: str | None
    dc_lambda: float | None
    max_staleness: int | None
    message_bytes: float | None
    seed: int
    axis_name: str

    def plan(self, num_workers: int, num_updates: int, nbytes: float, profile=None) -> Plan:
        """The :class:`Plan` of this schedule for ``num_workers`` over ``num_updates``
        (``nbytes``: one message, unless ``message_bytes`` is set)."""
        nbytes = nbytes if self.message_bytes is None else self.message_bytes
        sim = simulate(
            self.cluster,
            num_workers,
            num_updates,
            self.mode,
            self.staleness,
            self.k,
            nbytes,
            self.seed,
            profile,
        )
        return make_plan(
            sim.events, num_workers, self.max_staleness, sim.update_times, sim.segments, nbytes
        )

    def bind(self, num_updates: int | None, profile=None) -> Algorithm:
        """The algorithm over ``num_updates`` updates (the horizon; None: not runnable yet).
        The schedule is simulated when the step is first traced, for the workers of its axis
        and messages of the params' bytes. ``profile``: the :class:`jdo.system.StepProfile`
        a ``measured`` or ``flops`` compute model needs."""
        if num_updates is not None:
            checks.positive_int("num_updates", num_updates)
        pre = corrections(self.dc_lambda, self.lr_scaling)
        bound = _Bound(self, num_updates, profile, {})
        return Algorithm(_init(self.optimizer, pre), bound.step)

    def stand_in(self, num_workers: int) -> Algorithm:
        """A synchronous step of the same work (every worker's gradient applied), which the
        runner profiles for a ``measured`` or ``flops`` compute model before :meth:`bind`."""
        sync = [Event(0.0, w, 0, 1) for w in range(num_workers)]
        return replay(self.loss_fn, self.optimizer, make_plan(sync, num_workers))


@dataclasses.dataclass(frozen=True)
class _Bound:
    sim: SimulatedPS
    num_updates: int | None
    profile: Any
    steps: dict  # (workers, message bytes) -> the replaying step

    def step(self, state, batch, key):
        if self.num_updates is None:
            raise checks.InvalidArgument(
                "num_updates",
                "is required to run the simulated asynchronous PS (the schedule's horizon, "
                "e.g. the number of steps); or bind it: "
                "jdo.asynchrony.simulation_of(algo).bind(steps)",
            )
        sim = self.sim
        workers = axis_size(sim.axis_name)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
        if (workers, nbytes) not in self.steps:
            plan = sim.plan(workers, self.num_updates, nbytes, self.profile)
            pre = corrections(sim.dc_lambda, sim.lr_scaling)
            self.steps[workers, nbytes] = _step(
                sim.loss_fn, sim.optimizer, pre, plan, sim.axis_name
            )
        return self.steps[workers, nbytes](state, batch, key)


def simulation_of(algorithm: Algorithm) -> SimulatedPS | None:
    """The :class:`SimulatedPS` behind an algorithm made by :func:`algorithm` (None for any
    other): the runner binds its horizon from it."""
    owner = getattr(algorithm.step, "__self__", None)
    return owner.sim if isinstance(owner, _Bound) else None


def algorithm(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mode: str,
    staleness: int | None = None,
    k: int | None = None,
    cluster=None,
    num_updates: int | None = None,
    lr_scaling: str | None = None,
    dc_lambda: float | None = None,
    max_staleness: int | None = None,
    message_bytes: float | None = None,
    profile=None,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""A parameter server with asynchronous workers, simulated deterministically on the
    cluster's clock: :func:`jdo.asynchrony.schedule` decides who arrives when and which
    version each gradient was computed on, and every runner step applies one version.

    Update :math:`t` averages the gradients :math:`A_t` the schedule applies then, each
    computed on the version :math:`w_{\tau_i}` its worker read (:math:`\tau_i` updates old),
    optionally corrected, then steps ``optimizer``:

    .. math:: w_{t+1} = w_t + \mathrm{opt}\Big(\frac1{|A_t|}\sum_{i\in A_t}
              C_{\tau_i}\big(\nabla f(w_{\tau_i}; \xi_i)\big)\Big),

    with :math:`C` the identity, DC-ASGD's :math:`g + \lambda g\odot g\odot(w_t - w_{\tau})`
    (Zheng et al. 2017, ICML) and/or the staleness-aware rate :math:`g/\max(\tau, 1)` (Zhang
    et al. 2016, IJCAI). Modes: ``async`` (Dean et al. 2012's Downpour: apply on arrival),
    ``ssp`` (Ho et al. 2013: a worker waits when more than ``staleness`` gradients ahead of
    the slowest), ``k_async`` (Dutta et al. 2018: apply every ``k`` arrivals). Equal compute
    times give synchronous SGD (:func:`jdo.algorithms.allreduce_sgd`) bit for bit.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` for one worker's batch.
      optimizer: the server's optax optimizer.
      mode: ``"async"``, ``"ssp"`` or ``"k_async"``.
      staleness: SSP's bound :math:`s \ge 0` (``ssp`` only).
      k: arrivals per update (``k_async`` only), ``1..W``.
      cluster: the :class:`jdo.system.Cluster` whose compute times, stragglers and inter-node
        link decide the schedule (required).
      num_updates: the schedule's horizon (updates; the runner passes ``trainer.steps``);
        None: bind it later with ``simulation_of(algo).bind(n)``. Steps past it change nothing.
      lr_scaling: None or ``"inverse"`` (the staleness-aware learning rate).
      dc_lambda: DC-ASGD's :math:`\lambda` (None: off).
      max_staleness: drop gradients staler than this (None: keep all).
      message_bytes: bytes of one push or pull (None: the params' bytes).
      profile: the :class:`jdo.system.StepProfile` a ``measured``/``flops`` compute model needs.
      seed: added to the cluster's seed for the straggler draws.
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` with :class:`AsyncPSState`; metrics add
      ``asynchrony`` (running update and staleness counts) and ``clock`` (simulated time).
    """
    checks.function("loss_fn", loss_fn)
    checks.optimizer("optimizer", optimizer)
    if cluster is None:
        raise checks.InvalidArgument(
            "cluster",
            "is required: asynchrony is decided by the simulated cluster's clock "
            "(cluster=datacenter, cloud, edge or measured)",
        )
    if not hasattr(cluster, "compute_seconds"):
        raise checks.WrongType("cluster", f"must be a jdo.system.Cluster, got {cluster!r}")
    workers = cluster.size if cluster.nodes is not None else None
    check_mode(mode, staleness, k, workers if workers is not None else max(k or 1, 1))
    if max_staleness is not None:
        checks.non_negative_int("max_staleness", max_staleness)
    if message_bytes is not None:
        checks.non_negative("message_bytes", message_bytes)
    corrections(dc_lambda, lr_scaling)  # checks them
    sim = SimulatedPS(
        loss_fn,
        optimizer,
        mode,
        staleness,
        k,
        cluster,
        lr_scaling,
        dc_lambda,
        max_staleness,
        message_bytes,
        checks.integer("seed", seed),
        axis_name,
    )
    return sim.bind(num_updates, profile)
