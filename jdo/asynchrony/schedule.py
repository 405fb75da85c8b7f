r"""Deterministic asynchrony on the simulated cluster's clock: who finishes when decides the
order in which gradients reach the parameter server, and which parameter version each read.

Host-side, pure numpy and Python (JAX only evaluates a straggler model's draws, vectorised, when
the cluster has one). The semantics (``jdo.asynchrony.schedule``):

- Every worker starts at time 0 reading version 0 (the first read is free).
- Worker :math:`i`'s :math:`n`-th gradient (:math:`n = 0, 1, \dots`) computes for
  :math:`c_i(n)`: the cluster's compute seconds for worker :math:`i` through its straggler
  model at ``(worker=i, step=n)`` with the cluster's seed, exactly the draw the synchronous
  clock (:mod:`jdo.system.clock`) makes for that worker's :math:`n`-th step. It then pushes the
  gradient (:math:`p = \alpha + S/B` on the inter-node link, ``S = message_bytes``) and arrives
  at the server at :math:`t_{start} + c_i(n) + p`.
- ``async`` (Dean et al. 2012's Downpour SGD; Hogwild-style lock-free application): every
  arrival is applied on arrival; arrivals at the same instant (equal float64 times) are applied
  together as one averaged update, version :math:`v \to v + 1`. Equal compute times are
  therefore synchronous SGD.
- ``k_async`` (Dutta et al. 2018's K-async SGD): arrivals queue in arrival order (ties by
  worker index); every ``k`` of them are applied as one averaged update (leftovers wait for
  the next ``k``). A worker waits for its own gradient to be applied.
- ``ssp`` (Ho et al. 2013's Stale Synchronous Parallel, staleness :math:`s`): applied as
  ``async``; a worker that has completed :math:`n` gradients starts its next one only when every
  worker has completed at least :math:`n - s` (``s = 0``: bulk-synchronous).
- After its gradient is applied a worker pulls (:math:`p` seconds) and starts again, reading the
  version that is newest when its pull completes; under ``ssp`` a worker still held back when
  its pull completes waits, and reads the newest version at the instant it is released.
  Updates at time :math:`t` are visible to a read at time :math:`t`.

The staleness of an event is ``applied_version - 1 - read_version``: the number of updates the
server applied between the worker's read and its own update (under SSP it can exceed :math:`s`,
as in Ho et al.; the bound is on progress, not on staleness).

References: Dean et al. 2012, "Large Scale Distributed Deep Networks", NeurIPS; Ho et al. 2013,
"More Effective Distributed ML via a Stale Synchronous Parallel Parameter Server", NeurIPS;
Dutta, Joshi, Ghosh, Dube & Nagpurkar 2018, "Slow and Stale Gradients Can Win the Race:
Error-Runtime Trade-offs in Distributed SGD", AISTATS.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from jdo import checks

MODES = ("async", "ssp", "k_async")
# Per worker: the kinds of time its timeline is made of (what the clock metrics report).
COMPUTE, COMM, WAIT = 0, 1, 2
BLOCK = 64  # gradients per worker drawn at once (one compiled shape per straggler model)


class Event(NamedTuple):
    """One gradient applied at the server.

    Attributes:
      time: simulated seconds at which it was applied (float64).
      worker: the worker that computed it.
      read_version: the parameter version it was computed on.
      applied_version: the version its update produced (``v + 1`` when applied to ``v``).
    """

    time: float
    worker: int
    read_version: int
    applied_version: int

    @property
    def staleness(self) -> int:
        """``applied_version - 1 - read_version``: updates between its read and its update."""
        return self.applied_version - 1 - self.read_version


@dataclasses.dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` returns.

    Attributes:
      events: every :class:`Event`, in application order (by worker within one update).
      update_times: ``[num_updates]`` float64, the time of each update (version ``u + 1``).
      segments: per worker, ``[n, 3]`` float64 rows ``(start, end, kind)`` covering its
        timeline from 0 without gaps (``kind``: ``COMPUTE``, ``COMM``, ``WAIT``); the last one
        reaches at least the last update's time.
    """

    events: list[Event]
    update_times: np.ndarray
    segments: list[np.ndarray]


class _Draws:
    """``c_i(n)`` for every worker ``i`` and gradient ``n``, drawn in blocks on demand."""

    def __init__(self, cluster, workers: int, profile, block: int = BLOCK):
        self.cluster, self.block = cluster, block
        self.base = np.array(
            [cluster.compute_seconds(w, profile) for w in range(workers)], np.float64
        )
        self.table = np.zeros((workers, 0), np.float64)

    def __call__(self, worker: int, n: int) -> float:
        while n >= self.table.shape[1]:
            self.table = np.concatenate([self.table, self._draw(self.table.shape[1])], axis=1)
        return float(self.table[worker, n])

    def _draw(self, first: int) -> np.ndarray:
        steps = np.arange(first, first + self.block)
        if self.cluster.stragglers is None:
            return np.repeat(self.base[:, None], self.block, axis=1)
        return straggler_draws(self.cluster, self.base, steps)


def straggler_draws(cluster, base_seconds, steps) -> np.ndarray:
    """``[W, len(steps)]`` float64: ``cluster.stragglers.sample(key(cluster.seed), i, n,
    base_seconds[i])`` for every worker ``i`` and step ``n``, evaluated at once (the same
    float32 values the traced clock draws)."""
    import jax

    grid = _grid(cluster.stragglers, cluster.seed)
    workers = np.arange(len(base_seconds), dtype=np.int32)
    seconds = np.asarray(base_seconds, np.float32)
    with jax.ensure_compile_time_eval():  # concrete even when the schedule is made mid-trace
        out = grid(workers, seconds, np.asarray(steps, np.int32))
        return np.asarray(out, np.float32).astype(np.float64)


@functools.lru_cache(maxsize=32)
def _grid(stragglers, seed: int):
    import jax

    one = lambda w, c, n: stragglers.sample(jax.random.key(seed), w, n, c)
    per_worker = jax.vmap(one, in_axes=(None, None, 0))
    return jax.jit(jax.vmap(per_worker, in_axes=(0, 0, None)))


def schedule(
    cluster,
    num_workers: int,
    num_updates: int,
    mode: str = "async",
    staleness: int | None = None,
    k: int | None = None,
    message_bytes: float = 0,
    seed: int = 0,
    *,
    profile=None,
) -> list[Event]:
    """Every :class:`Event` of the first ``num_updates`` applied versions, in application order
    (within one averaged update, by worker index). See the module docstring for the rules.

    Args:
      cluster: a :class:`jdo.system.Cluster` (compute model, speeds, stragglers, inter link).
      num_workers: W.
      num_updates: how many versions to simulate.
      mode: ``"async"``, ``"ssp"`` (needs ``staleness``) or ``"k_async"`` (needs ``k``).
      staleness: SSP's bound :math:`s \\ge 0`.
      k: arrivals per update under ``k_async``, in ``[1, W]``.
      message_bytes: bytes of one push and of one pull (the model's size).
      seed: the straggler draws' seed, added to ``cluster.seed`` (0: the cluster's own draws,
        the same as the synchronous clock's).
      profile: the :class:`jdo.system.StepProfile` a ``measured`` or ``flops`` compute model
        needs (one worker's gradient step).

    Returns:
      A list of :class:`Event`.
    """
    return simulate(
        cluster, num_workers, num_updates, mode, staleness, k, message_bytes, seed, profile
    ).events


def check_mode(mode, staleness, k, num_workers: int) -> None:
    """The mode and its parameter (``InvalidArgument`` naming the bad one)."""
    checks.one_of("mode", mode, MODES)
    if mode == "ssp":
        if staleness is None:
            raise checks.InvalidArgument("staleness", "is required with mode 'ssp' (s >= 0)")
        checks.non_negative_int("staleness", staleness)
    elif staleness is not None:
        raise checks.InvalidArgument("staleness", f"is only taken by mode 'ssp', not {mode!r}")
    if mode == "k_async":
        if k is None:
            raise checks.InvalidArgument("k", f"is required with mode 'k_async' (1..{num_workers})")
        if checks.positive_int("k", k) > num_workers:
            raise checks.InvalidArgument(
                "k", f"must be at most the number of workers ({num_workers}), got {k}"
            )
    elif k is not None:
        raise checks.InvalidArgument("k", f"is only taken by mode 'k_async', not {mode!r}")


def simulate(
    cluster,
    num_workers: int,
    num_updates: int,
    mode: str = "async",
    staleness: int | None = None,
    k: int | None = None,
    message_bytes: float = 0,
    seed: int = 0,
    profile=None,
) -> Simulation:
    """:func:`schedule` with every worker's timeline (for the simulated-time metrics)."""
    num_workers = checks.positive_int("num_workers", num_workers)
    num_updates = checks.positive_int("num_updates", num_updates)
    check_mode(mode, staleness, k, num_workers)
    checks.non_negative("message_bytes", message_bytes)
    seed = checks.integer("seed", seed)
    if not hasattr(cluster, "compute_seconds"):
        raise checks.WrongType("cluster", f"must be a jdo.system.Cluster, got {cluster!r}")
    cluster = cluster.for_workers(num_workers)
    if seed:
        cluster = dataclasses.replace(cluster, seed=cluster.seed + seed)
    draws = _Draws(cluster, num_workers, profile)
    transfer = cluster.inter.time(message_bytes)
    sim = _Server(num_workers, num_updates, mode, staleness, k, draws, transfer)
    return sim.run()


class _Server:
    """The simulation, advanced one distinct instant at a time: every arrival at time t is
    handled (updates), then the SSP releases, then every read at t (which schedules that
    worker's next arrival strictly later)."""

    def __init__(self, workers, num_updates, mode, staleness, k, draws, transfer):
        self.w, self.target, self.mode = workers, num_updates, mode
        self.s, self.k, self.draws, self.transfer = staleness, k, draws, transfer
        self.arrival = np.full(workers, np.inf)  # when each pending gradient arrives
        self.read_at = np.zeros(workers)  # when each worker's pull completes (inf: none)
        self.blocked = np.zeros(workers, bool)  # pulled, held back by SSP
        self.completed = np.zeros(workers, np.int64)  # gradients applied
        self.started = np.zeros(workers, np.int64)  # gradients started
        self.read_version = np.zeros(workers, np.int64)
        self.queue: list[int] = []  # k_async: arrived, not yet applied
        self.version, self.events, self.times = 0, [], []
        self.segments = [[] for _ in range(workers)]
        self.clock = np.zeros(workers)  # the end of each worker's timeline so far

    def _segment(self, worker: int, end: float, kind: int) -> None:
        start = self.clock[worker]
        if end > start:
            self.segments[worker].append((start, end, kind))
            self.clock[worker] = end

    def run(self) -> Simulation:
        while self.version < self.target:
            t = float(min(self.arrival.min(), self.read_at.min()))
            if not np.isfinite(t):  # cannot happen with valid modes; guards an endless loop
                raise RuntimeError("asynchrony schedule stalled")
            self._arrivals(t)
            if self.version >= self.target:
                break
            self._release(t)
            self._reads(t)
        end = self.times[-1]
        for w in range(self.w):  # idle (waiting) up to the last update
            self._segment(w, end, WAIT)
        segments = [np.asarray(s, np.float64).reshape(-1, 3) for s in self.segments]
        return Simulation(self.events, np.asarray(self.times, np.float64), segments)

    def _arrivals(self, t: float) -> None:
        arrived = np.flatnonzero(self.arrival == t)
        if not arrived.size:
            return
        self.arrival[arrived] = np.inf
        if self.mode != "k_async":
            self._update(t, arrived)
            return
        self.queue.extend(int(w) for w in arrived)  # flatnonzero: ties by worker index
        while len(self.queue) >= self.k and self.version < self.target:
            group, self.queue = self.queue[: self.k], self.queue[self.k :]
            self._update(t, np.asarray(group))

    def _update(self, t: float, workers) -> None:
        self.version += 1
        self.times.append(t)
        for w in sorted(int(w) for w in workers):
            self.events.append(Event(t, w, int(self.read_version[w]), self.version))
            self._segment(w, t, WAIT)  # k_async: waited for the group since its arrival
            self.completed[w] += 1
            self.read_at[w] = t + self.transfer
            self._segment(w, t + self.transfer, COMM)  # the pull

    def _release(self, t: float) -> None:
        if self.mode == "ssp":
            free = self.blocked & (self.completed - self.s <= self.completed.min())
            self.read_at[free] = t
            self.blocked &= ~free

    def _reads(self, t: float) -> None:
        for w in np.flatnonzero(self.read_at == t):
            self._segment(w, t, WAIT)  # held back by SSP since its pull completed
            if self.mode == "ssp" and self.completed[w] - self.s > self.completed.min():
                self.read_at[w], self.blocked[w] = np.inf, True
                continue
            self.read_at[w] = np.inf
            self.read_version[w] = self.version
            c = self.draws(int(w), int(self.started[w]))
            if c + self.transfer <= 0:
                raise checks.InvalidArgument(
                    "cluster",
                    f"gives worker {int(w)} a gradient of 0 seconds (compute + push): "
                    "asynchrony needs compute or communication time (compute=fixed(0)?)",
                )
            self.started[w] += 1
            self._segment(w, t + c, COMPUTE)
            self.arrival[w] = t + c + self.transfer
            self._segment(w, self.arrival[w], COMM)
