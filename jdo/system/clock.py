r"""Per-worker clocks that follow the messages: a run's simulated time on a :class:`Cluster`.

Every worker keeps its own clock ``t_i`` (seconds since the run began) in its algorithm state.
One step of worker ``i``, in program order:

1. compute: ``r_i = t_i + c_i``, with ``c_i`` the cluster's compute time for this worker at
   this step (device speed and stragglers included);
2. every collective of the step, as the algorithm calls it through :mod:`jdo.comm`:

   - a barrier (all-reduce, all-gather, reduce-scatter, all-to-all, broadcast) over the
     workers: ``r_i <- max_j r_j + T(kind, S, W)`` with ``T`` from
     :meth:`Cluster.collective_time` (one all-gather of the clocks, on the same axis);
   - a neighbour exchange (the ``ppermute`` rounds of one mixing step run concurrently):
     ``r_i <- max(r_i, max_{j -> i} r_j + alpha_ji + S / B_ji)`` on the link between j and i
     (the same ``ppermute`` schedule, applied to the clock);

3. ``t_i <- r_i``.

The time a worker's clock advanced is split three ways, per step: ``compute`` (``c_i``),
``comm`` (a barrier's ``T``; for an exchange, the transfer time of the message that arrived
last, as far as it ran past ``r_i``) and ``wait`` (the rest: idle until the slowest peer was
ready), so ``compute + comm + wait`` sums to the clock.

The clock is traced in the same program as the step and moves with the same collectives, so an
algorithm built from :mod:`jdo.comm` is clocked without extra code, and one that communicates
on some steps only (local SGD, DiLoCo) pays only on those steps. Control flow around a
collective must thread the clock: use :func:`cond`, :func:`switch`, :func:`fori_loop` and
:func:`scan` (also
exported by :mod:`jdo.comm`), which are ``jax.lax``'s own when no clock runs. Collectives
called through ``jax.lax`` directly (diagnostics such as a residual's norm) are not clocked.

Seconds are kept as double-float pairs (:class:`Time`: ``hi + lo``, float32 each; Dekker 1971
two-sum), so a clock stays within float32 rounding of float64 arithmetic over a long run even
though JAX computes in float32.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdo._axis import WORKERS, varying
from jdo._logical import agreed, axis_index, axis_size, ppermute
from jdo._logical import all_gather as gather_workers

# ----------------------------------------------------------------------------------------------
# Double-float seconds
# ----------------------------------------------------------------------------------------------


class Time(NamedTuple):
    """Seconds as ``hi + lo`` (float32 each, ``|lo| <= ulp(hi) / 2``)."""

    hi: jax.Array
    lo: jax.Array


def zero_time() -> Time:
    return Time(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def add(t: Time, x) -> Time:
    """``t + x`` for float32 ``x``, without losing ``x`` to ``t``'s rounding (two-sum)."""
    x = jnp.asarray(x, jnp.float32)
    s = t.hi + x
    v = s - t.hi
    err = (t.hi - (s - v)) + (x - v) + t.lo
    hi = s + err
    return Time(hi, err - (hi - s))


def later(a: Time, b: Time) -> jax.Array:
    """``a > b``."""
    return (a.hi > b.hi) | ((a.hi == b.hi) & (a.lo > b.lo))


def select(pred, a: Time, b: Time) -> Time:
    return Time(jnp.where(pred, a.hi, b.hi), jnp.where(pred, a.lo, b.lo))


def diff(a: Time, b: Time) -> jax.Array:
    """``a - b`` as float32 (a short interval)."""
    return (a.hi - b.hi) + (a.lo - b.lo)


def pmax(t: Time, axis_name: str) -> Time:
    """The latest clock over ``axis_name``: one all-gather of every worker's ``(hi, lo)`` (8
    bytes each), then the largest ``hi`` and, among the workers holding it, the largest ``lo``
    (one collective, where two chained ``pmax`` would be two)."""
    his, los = _gathered(t, axis_name)
    hi = jnp.max(his)
    return Time(hi, jnp.max(jnp.where(his == hi, los, -jnp.inf)))


def seconds(t) -> np.ndarray:
    """Host-side float64 seconds of a :class:`Time` (or of stacked ones)."""
    return np.asarray(t.hi, np.float64) + np.asarray(t.lo, np.float64)


# ----------------------------------------------------------------------------------------------
# The clock in the algorithm state
# ----------------------------------------------------------------------------------------------


class ClockState(NamedTuple):
    """One worker's clock (kept in its algorithm state, so a checkpoint holds it).

    Attributes:
      now: the clock (seconds since the run began).
      compute, comm, wait: what the clock spent on each so far (their sum is ``now``).
      compute_s: this worker's compute seconds per step, before stragglers.
      steps: steps clocked (the step index of the straggler draws).
    """

    now: Time
    compute: Time
    comm: Time
    wait: Time
    compute_s: jax.Array
    steps: jax.Array


class Clocked(NamedTuple):
    """An algorithm's state (``inner``) with the worker's clock beside it."""

    inner: Any
    clock: ClockState


def unwrap(state):
    """The algorithm's own state inside a :class:`Clocked` one (any other: itself)."""
    return state.inner if isinstance(state, Clocked) else state


def start(compute_s, axis_name: str = WORKERS) -> ClockState:
    """A worker's clock at time 0. ``compute_s``: seconds per step, one float for every worker
    or a ``[W]`` sequence (indexed by this worker's index on ``axis_name``)."""
    per_worker = np.asarray(compute_s, np.float32)
    c = jnp.asarray(per_worker)
    if per_worker.ndim:
        c = c[axis_index(axis_name)]
    return ClockState(
        zero_time(), zero_time(), zero_time(), zero_time(), c, jnp.zeros((), jnp.int32)
    )


# Indices of :func:`as_vector`'s entries.
VECTOR = (
    "now_hi",
    "now_lo",
    "compute_hi",
    "compute_lo",
    "comm_hi",
    "comm_lo",
    "wait_hi",
    "wait_lo",
    "steps",
)


def as_vector(clock: ClockState) -> jax.Array:
    """The clock as a float32 ``[9]`` vector (see ``VECTOR``): what a step reports so the host
    can read every worker's clock (:func:`times`)."""
    parts = [p for t in (clock.now, clock.compute, clock.comm, clock.wait) for p in t]
    return jnp.stack([*parts, clock.steps.astype(jnp.float32)])


def times(vectors) -> dict[str, float]:
    """Host side: ``time/total`` (the latest clock), ``time/min`` (the earliest), and the
    per-step means over workers ``time/compute``, ``time/comm``, ``time/wait`` from the
    stacked :func:`as_vector` of every worker (``[W, 9]``)."""
    v = np.asarray(vectors, np.float64)
    pair = lambda name: v[:, VECTOR.index(f"{name}_hi")] + v[:, VECTOR.index(f"{name}_lo")]
    now, steps = pair("now"), max(float(v[:, VECTOR.index("steps")].max()), 1.0)
    return {
        "time/total": float(now.max()),
        "time/min": float(now.min()),
        **{f"time/{k}": float(pair(k).mean() / steps) for k in ("compute", "comm", "wait")},
    }


# ----------------------------------------------------------------------------------------------
# The running step's clock (trace time)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _StepClock:
    """The clock of the step being traced: ``ready`` is this worker's clock as the step goes
    on; ``comm`` and ``wait`` what it spent on each in this step so far."""

    cluster: Any
    axis_name: str
    ready: Time
    comm: jax.Array
    wait: jax.Array
    abandoned: jax.Array  # compute a late worker gave up (backup workers)

    def carry(self):
        return varying((self.ready, self.comm, self.wait, self.abandoned), self.axis_name)

    def load(self, carry) -> None:
        self.ready, self.comm, self.wait, self.abandoned = carry


_ACTIVE: contextvars.ContextVar[tuple[_StepClock, ...]] = contextvars.ContextVar(
    "jdo_clock", default=()
)


@contextlib.contextmanager
def _running(clock: _StepClock):
    token = _ACTIVE.set((*_ACTIVE.get(), clock))
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)


def _innermost() -> _StepClock | None:
    active = _ACTIVE.get()
    return active[-1] if active else None


def active(axis_name: str = WORKERS) -> bool:
    """Whether a clock runs on ``axis_name`` in the step being traced."""
    clock = _innermost()
    return clock is not None and clock.axis_name == axis_name


def _on(axis_name: str) -> _StepClock | None:
    clock = _innermost()
    return clock if clock is not None and clock.axis_name == axis_name else None


def tree_bytes(tree) -> int:
    """Bytes of one worker's pytree (what one message of it carries)."""
    return int(
        sum(np.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    )


def barrier(kind: str, nbytes: int, axis_name: str = WORKERS, wait_for: int | None = None) -> None:
    """A barrier collective of ``kind`` over every worker of ``axis_name`` moving ``nbytes``
    (nccl-tests' buffer size): every clock becomes the latest plus the collective's time.
    ``wait_for=k`` (backup workers; Chen et al. 2016): the collective starts when the k-th
    earliest worker is ready, and the later ones abandon their step (their clocks jump to the
    collective's end; the compute they did not finish is not counted). Does nothing when no
    clock runs."""
    clock = _on(axis_name)
    n = axis_size(axis_name)
    if clock is None or n == 1:
        return
    cost = jnp.float32(clock.cluster.collective_time(kind, nbytes, n))
    start = (
        pmax(clock.ready, axis_name) if wait_for is None else kth(clock.ready, wait_for, axis_name)
    )
    late = later(clock.ready, start)
    clock.wait = clock.wait + jnp.where(late, 0.0, diff(start, clock.ready))
    clock.abandoned = clock.abandoned + jnp.where(late, diff(clock.ready, start), 0.0)
    clock.comm = clock.comm + cost
    clock.ready = add(start, cost)


def group_barrier(kind: str, nbytes: int, group_size: int, axis_name: str = WORKERS) -> None:
    """A barrier collective of ``kind`` moving ``nbytes`` inside each group of ``group_size``
    consecutive workers (workers ``[g·k, (g+1)·k)``, e.g. the workers of one node): every
    clock of a group becomes the group's latest plus the collective's time over
    ``group_size`` workers (on the intra-node link when the group lies inside a node). Does
    nothing when no clock runs."""
    clock = _on(axis_name)
    if clock is None or group_size == 1:
        return
    cost = jnp.float32(clock.cluster.collective_time(kind, nbytes, group_size))
    hi, lo = _gathered(clock.ready, axis_name)
    group = axis_index(axis_name) // group_size
    hi, lo = hi.reshape(-1, group_size)[group], lo.reshape(-1, group_size)[group]
    last = jnp.lexsort((lo, hi))[-1]
    start = Time(hi[last], lo[last])
    clock.wait = clock.wait + diff(start, clock.ready)
    clock.comm = clock.comm + cost
    clock.ready = add(start, cost)


def _gathered(t: Time, axis_name: str) -> tuple[jax.Array, jax.Array]:
    both = gather_workers(jnp.stack([t.hi, t.lo]), axis_name)  # [W, 2]
    return both[:, 0], both[:, 1]


def _ranks(t: Time, axis_name: str) -> jax.Array:
    """Every worker's rank by clock, earliest 0 (ties to the lower index): ``[W]`` int32."""
    hi, lo = _gathered(t, axis_name)
    order = jnp.lexsort((jnp.arange(hi.shape[0]), lo, hi))
    return jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))


def kth(t: Time, k: int, axis_name: str = WORKERS) -> Time:
    """The ``k``-th earliest clock over ``axis_name`` (``k = W``: the latest)."""
    hi, lo = _gathered(t, axis_name)
    order = jnp.lexsort((lo, hi))
    return Time(hi[order[k - 1]], lo[order[k - 1]])


def first_to_arrive(count: int, axis_name: str = WORKERS) -> jax.Array:
    """Whether this worker is among the ``count`` whose clocks are earliest in the step being
    traced (ties to the lower index): the workers a synchronous step with ``W − count`` backup
    workers aggregates. With no running clock every worker is ready at once, so the tie rule
    keeps the ``count`` lowest indices."""
    clock = _on(axis_name)
    if clock is None:
        return axis_index(axis_name) < count
    return _ranks(clock.ready, axis_name)[axis_index(axis_name)] < count


def exchange(
    rounds: Sequence[Sequence[tuple[int, int]]],
    nbytes: int,
    axis_name: str = WORKERS,
    received: Sequence | None = None,
):
    """The ``ppermute`` rounds of one mixing step (concurrent), each message ``nbytes``: a
    receiver's clock becomes the latest of its own and every arrival ``r_j + alpha + S / B``.
    ``received``: per round, this worker's traced bool "my message of this round arrived"
    (None: all did); a lost message (a dropped link, a crashed sender) never delays its
    receiver. Does nothing when no clock runs."""
    clock = _on(axis_name)
    rounds = [[(s, d) for s, d in perm if s != d] for perm in rounds]
    if clock is None or not any(rounds):
        return
    if received is None:
        received = [True] * len(rounds)
    n, me = axis_size(axis_name), axis_index(axis_name)
    best, binding = clock.ready, jnp.zeros((), jnp.float32)
    for perm, arrived in zip(rounds, received, strict=True):
        if not perm:
            continue
        delay, receives = np.zeros(n, np.float32), np.zeros(n, bool)
        for src, dst in perm:
            delay[dst] = clock.cluster.message_time(src, dst, nbytes)
            receives[dst] = True
        sent = Time(*ppermute(jnp.stack(clock.ready), axis_name, perm))  # one message
        arrival = add(sent, jnp.asarray(delay)[me])
        take = jnp.asarray(receives)[me] & arrived & later(arrival, best)
        best = select(take, arrival, best)
        binding = jnp.where(take, jnp.asarray(delay)[me], binding)
    advance = diff(best, clock.ready)
    comm = jnp.minimum(binding, advance)
    clock.comm, clock.wait, clock.ready = clock.comm + comm, clock.wait + advance - comm, best


# ----------------------------------------------------------------------------------------------
# Control flow that threads the clock
# ----------------------------------------------------------------------------------------------


def _threaded(clock: _StepClock, fn: Callable) -> Callable:
    def run(carry, *args):
        inner = dataclasses.replace(clock)
        inner.load(carry)
        with _running(inner):
            out = fn(*args)
        return out, inner.carry()

    return run


def switch(index, branches: Sequence[Callable], *operands):
    """``jax.lax.switch`` that carries the running clock through its branches (a branch that
    communicates advances it; the others do not). ``index`` must be the same on every worker
    (as the collectives in the branches need); under the hybrid lifting each device runs the
    branch of its first worker's index (:func:`jdo._logical.agreed`)."""
    index = agreed(index)
    clock = _innermost()
    if clock is None:
        return jax.lax.switch(index, branches, *operands)
    threaded = [_threaded(clock, b) for b in branches]
    out, carry = jax.lax.switch(index, threaded, clock.carry(), *operands)
    clock.load(carry)
    return out


def cond(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``jax.lax.cond`` that carries the running clock through its branches (``pred`` the same
    on every worker, as for :func:`switch`)."""
    if _innermost() is None:
        return jax.lax.cond(agreed(pred), true_fn, false_fn, *operands)
    return switch(jnp.asarray(pred).astype(jnp.int32), [false_fn, true_fn], *operands)


def fori_loop(lower, upper, body: Callable, init):
    """``jax.lax.fori_loop`` that carries the running clock through its iterations."""
    clock = _innermost()
    if clock is None:
        return jax.lax.fori_loop(lower, upper, body, init)
    step = _threaded(clock, body)

    def threaded(i, carry):
        clock_carry, value = carry
        value, clock_carry = step(clock_carry, i, value)
        return clock_carry, value

    clock_carry, value = jax.lax.fori_loop(lower, upper, threaded, (clock.carry(), init))
    clock.load(clock_carry)
    return value


def scan(f: Callable, init, xs=None, length: int | None = None, **kwargs):
    """``jax.lax.scan`` that carries the running clock through its iterations."""
    clock = _innermost()
    if clock is None:
        return jax.lax.scan(f, init, xs, length, **kwargs)
    step = _threaded(clock, f)

    def threaded(carry, x):
        clock_carry, value = carry
        (value, y), clock_carry = step(clock_carry, value, x)
        return (clock_carry, value), y

    (clock_carry, value), ys = jax.lax.scan(threaded, (clock.carry(), init), xs, length, **kwargs)
    clock.load(clock_carry)
    return value, ys


# ----------------------------------------------------------------------------------------------
# A clocked step
# ----------------------------------------------------------------------------------------------


def compute_time(cluster, clock: ClockState, axis_name: str = WORKERS) -> jax.Array:
    """This worker's compute seconds at this step: ``compute_s`` through the cluster's
    stragglers, drawn from ``fold_in(fold_in(key(cluster.seed), worker), step)``."""
    if cluster.stragglers is None:
        return clock.compute_s
    key = jax.random.key(cluster.seed)
    worker = axis_index(axis_name)
    return jnp.asarray(
        cluster.stragglers.sample(key, worker, clock.steps, clock.compute_s), jnp.float32
    )


def clocked(step: Callable, cluster, axis_name: str = WORKERS) -> Callable:
    """``step(*args) -> out`` (one worker's step) as ``f(clock, *args) -> (out, clock)``: the
    clock gains the step's compute time, then follows every collective the step makes through
    :mod:`jdo.comm` (see the module docstring)."""

    def run(clock: ClockState, *args):
        c = compute_time(cluster, clock, axis_name)
        zero = jnp.zeros((), jnp.float32)
        running = _StepClock(cluster, axis_name, add(clock.now, c), zero, zero, zero)
        with _running(running):
            out = step(*args)
        new = ClockState(
            now=running.ready,
            compute=add(clock.compute, c - running.abandoned),
            comm=add(clock.comm, running.comm),
            wait=add(clock.wait, running.wait),
            compute_s=clock.compute_s,
            steps=clock.steps + 1,
        )
        return out, varying(new, axis_name)

    return run
