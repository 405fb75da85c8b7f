r"""Asynchronous gossip (AD-PSGD) on the simulated cluster clock: the host-side event schedule,
the pairwise exchange one worker makes with its partner, and their dense numpy references.

The schedule (:func:`gossip_schedule`) follows Lian, Zhang, Zhang & Liu (ICML 2018,
"Asynchronous Decentralized Parallel Stochastic Gradient Descent"), Algorithm 1, on a
deterministic clock:

- every worker starts at time 0 reading its model (version 0);
- worker i's k-th gradient (k = 0, 1, ...) starts at :math:`s_i(k)` on the model it read then
  and computes for :math:`c_i(k)` seconds: the cluster's compute time of worker i
  (:meth:`~jdo.system.Cluster.compute_seconds`, or ``compute_seconds[i]``) through its
  stragglers, ``stragglers.sample(key(cluster.seed), i, k, ·)`` (the draws the synchronous
  clock :mod:`jdo.system.clock` makes for worker i's k-th step);
- it then picks a neighbour j uniformly at random (the k-th draw of
  ``numpy.random.default_rng([seed, i])`` over i's neighbours in increasing order) and
  exchanges models with it: both messages travel at once, :math:`m_{ij}` =
  :meth:`~jdo.system.Cluster.message_time` of ``message_bytes``;
- the **event** happens at :math:`e = s_i(k) + c_i(k) + m_{ij}`, atomically:
  :math:`x_i, x_j \leftarrow (x_i + x_j)/2`, then :math:`x_i \leftarrow x_i +
  \mathrm{opt}(\nabla f_i(\hat x_i))` with :math:`\hat x_i` the model i read at
  :math:`s_i(k)`; worker i reads its new model and starts gradient k + 1 at
  :math:`s_i(k+1) = e`. The passive partner j keeps computing (its averaging is done by a
  communication thread in the paper's implementation), so it pays no time;
- events are ordered by (time, worker); "the same instant" is equal float64 times.

Versions count the events that touched a worker's model (active or passive). An event's
``read_version`` is the version worker i read at :math:`s_i(k)`, its ``applied_version`` the
version of :math:`x_i` after it, and its staleness ``applied_version − 1 − read_version`` is the
number of neighbours that averaged into :math:`x_i` while its gradient was being computed.

**Waves.** Consecutive events whose pairs are disjoint commute (each touches only its own two
models, and a worker's read happens at its own event), so the runner applies them together as
one step: a wave is the longest run of consecutive events in which no worker appears twice, a
random matching of the graph (what the paper's implementation does concurrently). Applying the
waves in order is exactly applying the events in order. The effective matrix of an event (or a
wave) is :math:`(I + P)/2` with P the permutation swapping each pair: symmetric and doubly
stochastic.

Without a cluster every gradient takes one simulated second and messages are free: every
worker then applies one gradient per second, and the events of one second are ordered by
worker index.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index, axis_size, ppermute
from jdo.system import Cluster, StepProfile
from jdo.topology import Topology, check_topology, make_schedule

# ----------------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------------


def neighbours(topology: Topology) -> list[list[int]]:
    """Each worker's neighbours (increasing) in the undirected graph of ``topology``: the
    off-diagonal support of its mixing matrices over one period. Raises
    :class:`~jdo.checks.InvalidArgument` (``topology``) when that support is not symmetric."""
    check_topology("topology", topology)
    support = np.zeros((topology.n, topology.n), bool)
    for w in topology.matrices:
        support |= w > 0
    np.fill_diagonal(support, False)
    if not np.array_equal(support, support.T):
        raise checks.InvalidArgument(
            "topology",
            f"must be an undirected graph (symmetric links) for pairwise gossip; {topology!r} "
            "has one-way links (use ring, torus, star, complete, symmetric_exponential, ...)",
        )
    return [[int(j) for j in np.flatnonzero(row)] for row in support]


class Exchange(NamedTuple):
    """The static ppermute rounds that let any worker fetch any one neighbour's value.

    Attributes:
      rounds: full permutations (``(source, destination)`` pairs) covering every edge in both
        directions (the topology's fewest-rounds schedule of its adjacency).
      round_of: ``[W, W]`` int32, ``round_of[i, j]``: the round in which i receives from its
        neighbour j; −1 when j is not a neighbour (or j = i).
    """

    rounds: tuple[tuple[tuple[int, int], ...], ...]
    round_of: np.ndarray


@functools.lru_cache(maxsize=64)
def exchange_plan(topology: Topology) -> Exchange:
    """The :class:`Exchange` of ``topology`` (one ppermute per round: 2 on a ring, Δ on a
    graph of largest degree Δ, n − 1 on the complete graph)."""
    nbrs = neighbours(topology)
    n = topology.n
    adjacency = np.zeros((n, n))
    for i, js in enumerate(nbrs):
        adjacency[i, js] = 1.0
    schedule = make_schedule(adjacency)
    round_of = np.full((n, n), -1, np.int32)
    for r, (perm, weights) in enumerate(schedule.rounds):
        for src, dst in perm:
            if weights[dst] > 0:
                round_of[dst, src] = r
    round_of.setflags(write=False)
    return Exchange(tuple(perm for perm, _ in schedule.rounds), round_of)


def partner_value(x, partner, topology: Topology, axis_name: str = WORKERS):
    """The value ``x`` of worker ``partner`` (a traced int32 scalar: a neighbour of this worker,
    or this worker itself, which gets its own ``x``), for one worker's pytree ``x``.

    Every round of :func:`exchange_plan` runs (a ppermute's permutation must be static), and
    each worker keeps what arrived in the round carrying its partner's message: the compiled
    step sends ``rounds`` messages per worker where the asynchronous system sends one.
    Collectives go through ``jax.lax`` directly: the time of an exchange is the schedule's
    (:func:`gossip_schedule`), not the synchronous clock's.
    """
    n = axis_size(axis_name)
    if n != topology.n:
        raise checks.InvalidArgument(
            "topology", f"has {topology.n} nodes but the {axis_name!r} axis has {n} workers"
        )
    plan = exchange_plan(topology)
    me = axis_index(axis_name)
    which = jnp.asarray(plan.round_of)[me, partner]
    out = x
    for r, perm in enumerate(plan.rounds):
        received = ppermute(x, axis_name, perm)
        out = jax.tree.map(lambda o, v, r=r: jnp.where(which == r, v, o), out, received)
    return out


def pairwise_average(x, partner, topology: Topology, axis_name: str = WORKERS):
    """One worker's side of a pairwise gossip: ``(x + x_partner) / 2``, or ``x`` itself when
    ``partner`` is this worker (idle). With the partners of a matching (``partner[partner[i]]
    = i``) this is ``x ← (I + P) x / 2``, symmetric and doubly stochastic."""
    me = axis_index(axis_name)
    other = partner_value(x, partner, topology, axis_name)
    return jax.tree.map(lambda a, b: jnp.where(partner == me, a, (a + b) * 0.5), x, other)


def pairwise_average_reference(xs: np.ndarray, partners) -> np.ndarray:
    """Dense reference for :func:`pairwise_average` on stacked ``xs: [W, ...]`` with
    ``partners: [W]``."""
    xs, partners = np.asarray(xs), np.asarray(partners)
    idle = (partners == np.arange(len(partners))).reshape((-1,) + (1,) * (xs.ndim - 1))
    return np.where(idle, xs, (xs + xs[partners]) * xs.dtype.type(0.5))


def matching_matrix(partners) -> np.ndarray:
    """The effective mixing matrix ``(I + P) / 2`` of a matching given as ``partners: [W]``
    (``partners[i] = i``: worker i is idle, its row is ``e_i``)."""
    partners = np.asarray(partners)
    n = len(partners)
    m = np.zeros((n, n))
    m[np.arange(n), np.arange(n)] += 0.5
    m[np.arange(n), partners] += 0.5
    return m


# ----------------------------------------------------------------------------------------------
# The event schedule (host side)
# ----------------------------------------------------------------------------------------------


class GossipEvent(NamedTuple):
    """One AD-PSGD event (see the module docstring): at ``time`` worker ``worker`` averages
    with ``partner`` and applies its ``gradient``-th gradient (0-based), computed on the model
    version ``read_version`` it read at ``read_time``; afterwards its model is at version
    ``applied_version``. ``wave``: the runner step that applies it."""

    time: float
    worker: int
    partner: int
    wave: int
    gradient: int
    read_time: float
    read_version: int
    applied_version: int
    compute_s: float
    message_s: float

    @property
    def staleness(self) -> int:
        return self.applied_version - 1 - self.read_version


_FIELDS = GossipEvent._fields


@dataclasses.dataclass(frozen=True, eq=False)
class GossipSchedule:
    """Every event of an AD-PSGD run in application order, as numpy arrays (one entry per
    event, named like :class:`GossipEvent`'s fields), with the per-wave tables the runner
    steps through.

    Attributes:
      num_workers: W.
      num_waves: waves covered (the last may be cut short when ``num_events`` was asked).
      time, worker, partner, wave, gradient, read_time, read_version, applied_version,
        compute_s, message_s: ``[E]`` arrays (see :class:`GossipEvent`).
    """

    num_workers: int
    num_waves: int
    time: np.ndarray
    worker: np.ndarray
    partner: np.ndarray
    wave: np.ndarray
    gradient: np.ndarray
    read_time: np.ndarray
    read_version: np.ndarray
    applied_version: np.ndarray
    compute_s: np.ndarray
    message_s: np.ndarray

    def __len__(self) -> int:
        return len(self.time)

    def events(self) -> list[GossipEvent]:
        """The events as :class:`GossipEvent` tuples (Python numbers)."""
        cols = [getattr(self, f).tolist() for f in _FIELDS]
        return [GossipEvent(*row) for row in zip(*cols, strict=True)]

    @property
    def staleness(self) -> np.ndarray:
        """``[E]``: ``applied_version − 1 − read_version`` of every event."""
        return self.applied_version - 1 - self.read_version

    def partners(self) -> np.ndarray:
        """``[waves, W]`` int32: each worker's partner in each wave (itself when idle); the
        active and the passive worker of an event name each other."""
        out = np.tile(np.arange(self.num_workers, dtype=np.int32), (self.num_waves, 1))
        out[self.wave, self.worker] = self.partner
        out[self.wave, self.partner] = self.worker
        return out

    def active(self) -> np.ndarray:
        """``[waves, W]`` bool: the worker applies a gradient in that wave."""
        out = np.zeros((self.num_waves, self.num_workers), bool)
        out[self.wave, self.worker] = True
        return out

    def wave_time(self) -> np.ndarray:
        """``[waves]`` float64: the time of each wave's last event (when it is complete)."""
        out = np.zeros(self.num_waves)
        np.maximum.at(out, self.wave, self.time)
        return out

    def wave_sizes(self) -> np.ndarray:
        """``[waves]`` int: events per wave."""
        return np.bincount(self.wave, minlength=self.num_waves)

    def event_matrix(self, e: int) -> np.ndarray:
        """The ``[W, W]`` mixing matrix of event ``e``: ``I − (e_i − e_j)(e_i − e_j)ᵀ / 2``."""
        partners = np.arange(self.num_workers)
        i, j = int(self.worker[e]), int(self.partner[e])
        partners[i], partners[j] = j, i
        return matching_matrix(partners)

    def wave_matrix(self, wave: int) -> np.ndarray:
        """The ``[W, W]`` mixing matrix of a whole wave: the product of its events' matrices."""
        return matching_matrix(self.partners()[wave])


class _ComputeTimes:
    """``c_i(k)``: worker i's compute seconds for its k-th gradient, drawn in blocks of
    ``block`` gradients per worker (one jitted call per block)."""

    def __init__(self, base: np.ndarray, stragglers, seed: int, block: int = 256):
        self.base, self.stragglers, self.seed, self.block = base, stragglers, seed, block
        self.table = np.zeros((len(base), 0))

    def __call__(self, worker: int, k: int) -> float:
        if self.stragglers is None:
            return float(self.base[worker])
        while k >= self.table.shape[1]:
            self.table = np.concatenate([self.table, self._draw(self.table.shape[1])], axis=1)
        return float(self.table[worker, k])

    def _draw(self, k0: int) -> np.ndarray:
        sample = _sampler(self.stragglers, len(self.base), self.block)
        with jax.ensure_compile_time_eval():  # concrete even when called while tracing a step
            draws = sample(self.seed, jnp.asarray(self.base, jnp.float32), k0)
        return np.asarray(draws, np.float64)


@functools.lru_cache(maxsize=16)
def _sampler(stragglers, workers: int, block: int):
    """``(seed, base[W], k0) -> [W, block]`` straggler draws for steps ``k0 .. k0 + block``."""

    def draw(seed, base, k0):
        key = jax.random.key(seed)
        one = lambda w, k, c: stragglers.sample(key, w, k, c)
        steps = k0 + jnp.arange(block, dtype=jnp.int32)
        per_worker = jax.vmap(one, in_axes=(None, 0, None))
        return jax.vmap(per_worker, in_axes=(0, None, 0))(
            jnp.arange(workers, dtype=jnp.int32), steps, base
        )

    return jax.jit(draw)


def _base_seconds(cluster: Cluster | None, compute_seconds, n: int, profile) -> np.ndarray:
    if compute_seconds is not None:
        values = np.broadcast_to(np.asarray(compute_seconds, np.float64), (n,))
        if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise checks.InvalidArgument(
                "compute_seconds", f"must be one positive number or {n}, got {compute_seconds!r}"
            )
        return values.copy()
    if cluster is None:
        return np.ones(n)
    if cluster.compute.needs is not None and profile is None:
        raise checks.InvalidArgument(
            "profile",
            f"is required: the cluster's compute model ({type(cluster.compute).__name__}) needs "
            f"the step's {cluster.compute.needs} (a jdo.system.StepProfile; the runner measures "
            "it); or pass compute_seconds, or use cluster/compute=fixed",
        )
    return np.array([cluster.compute_seconds(w, profile) for w in range(n)], np.float64)


def _sized(cluster: Cluster | None, n: int) -> Cluster | None:
    if cluster is None:
        return None
    if not isinstance(cluster, Cluster):
        raise checks.WrongType(
            "cluster", f"must be a jdo.system.Cluster or None, got {type(cluster).__name__}"
        )
    return cluster.for_workers(n)


def gossip_schedule(
    topology: Topology,
    cluster: Cluster | None = None,
    *,
    num_waves: int | None = None,
    num_events: int | None = None,
    message_bytes: float = 0,
    compute_seconds: float | Sequence[float] | None = None,
    profile: StepProfile | None = None,
    seed: int = 0,
) -> GossipSchedule:
    """The AD-PSGD events of the first ``num_waves`` waves (or the first ``num_events``
    events), host-side, in application order (see the module docstring for the rules).

    Args:
      topology: an undirected graph over W workers (its mixing weights are not used: every
        exchange is a 1/2–1/2 average).
      cluster: the simulated cluster (sized for W with ``for_workers``); None: every gradient
        takes 1 second and messages are free.
      num_waves, num_events: how much of the (infinite) schedule to return; exactly one.
        A shorter schedule is a prefix of a longer one.
      message_bytes: the bytes of one model (each direction of an exchange carries one).
      compute_seconds: each worker's seconds per gradient before stragglers (one number or
        ``[W]``); default: the cluster's compute model.
      profile: the :class:`~jdo.system.StepProfile` a ``measured`` or ``flops`` compute
        model needs (not needed with ``compute_seconds``).
      seed: the neighbour draws.

    Returns:
      A :class:`GossipSchedule`.
    """
    nbrs = neighbours(topology)
    n = topology.n
    if (num_waves is None) == (num_events is None):
        raise checks.InvalidArgument("num_waves", "give exactly one of num_waves and num_events")
    limit_waves = None if num_waves is None else checks.positive_int("num_waves", num_waves)
    limit_events = None if num_events is None else checks.positive_int("num_events", num_events)
    seed = checks.integer("seed", seed, minimum=0)
    nbytes = checks.non_negative("message_bytes", message_bytes)
    cluster = _sized(cluster, n)
    compute = _ComputeTimes(
        _base_seconds(cluster, compute_seconds, n, profile),
        None if cluster is None else cluster.stragglers,
        0 if cluster is None else cluster.seed,
    )
    message = np.zeros((n, n))
    if cluster is not None:
        for i in range(n):
            for j in nbrs[i]:
                message[i, j] = cluster.message_time(i, j, nbytes)
    draws = [np.random.default_rng([seed, i]) for i in range(n)]

    def start(i: int, k: int, t: float):
        """Worker i starts gradient k at t: its event (time, worker, ...) to wait for."""
        j = nbrs[i][int(draws[i].integers(len(nbrs[i])))] if nbrs[i] else i
        c = compute(i, k)
        return (t + c + message[i, j], i, j, k, t, c, message[i, j])

    pending = [start(i, 0, 0.0) for i in range(n)]
    heapq.heapify(pending)
    version, read_version = np.zeros(n, np.int64), np.zeros(n, np.int64)
    rows, wave, busy = [], 0, set()
    while limit_events is None or len(rows) < limit_events:
        t, i, j, k, s, c, m = heapq.heappop(pending)
        if i in busy or j in busy:  # a worker would appear twice: the wave is complete
            wave, busy = wave + 1, set()
            if wave == limit_waves:
                break
        busy |= {i, j}
        version[i] += 1
        if j != i:
            version[j] += 1
        rows.append((t, i, j, wave, k, s, read_version[i], version[i], c, m))
        read_version[i] = version[i]
        heapq.heappush(pending, start(i, k + 1, t))
    cols = list(zip(*rows, strict=True))
    ints = {"worker", "partner", "wave", "gradient", "read_version", "applied_version"}
    arrays = {
        f: np.asarray(col, np.int64 if f in ints else np.float64)
        for f, col in zip(_FIELDS, cols, strict=True)
    }
    for a in arrays.values():
        a.setflags(write=False)
    waves = wave if limit_waves is not None else wave + 1
    return GossipSchedule(num_workers=n, num_waves=waves, **arrays)
