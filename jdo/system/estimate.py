"""The simulated time of one call of a user's own jitted step on a :class:`Cluster`.

:func:`estimate` reads the step's collectives (kinds, buffer sizes, group sizes, loop counts)
from its compiled HLO and prices each with ``cluster.collective_time``; the compute time comes
from ``cluster.compute``. The ops of one step run one after another, so their times add up.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jdo import checks
from jdo.system.cluster import Cluster, ring_cost
from jdo.system.compute import StepProfile


@dataclasses.dataclass(frozen=True)
class OpEstimate:
    """One collective operation and its price on the cluster.

    Attributes:
      kind, nbytes, group_size, count: the operation (``jdo.comm.CollectiveOp``'s fields).
      seconds: ``cluster.collective_time(kind, nbytes, group_size)``, for ONE run.
      wire_bytes: bytes one worker sends in ONE run (``cluster.wire_bytes``).
    """

    kind: str
    nbytes: int
    group_size: int
    count: int
    seconds: float
    wire_bytes: float


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Simulated seconds of one step.

    Attributes:
      ops: every collective operation of the step with its price.
      comm_s: ``sum(op.seconds * op.count)``: the ops run one after another.
      compute_s: the slowest worker's compute seconds (stragglers not included).
      total_s: ``compute_s + comm_s``.
      wire_bytes: ``sum(op.wire_bytes * op.count)``, bytes one worker sends per step.
      workers: devices of the compiled step (the cluster is sized for them).
      profile: what the compute model was given (measured seconds, XLA's FLOPs).
    """

    ops: tuple[OpEstimate, ...]
    comm_s: float
    compute_s: float
    total_s: float
    wire_bytes: float
    workers: int
    profile: StepProfile


def estimate(
    jitted_step: Callable, args: Sequence, cluster: Cluster, *, repeats: int = 5
) -> Estimate:
    r"""Simulated seconds of one call of ``jitted_step(*args)`` on ``cluster``.

    :math:`T = \max_i c_i + \sum_{\text{ops}} \text{count} \cdot
    \text{collective\_time}(\text{kind}, S, n)`, the α–β pricing of each collective of the
    compiled step (Hockney 1994; Thakur, Rabenseifner & Gropp 2005; see
    ``jdo.system.cluster``) with the node layout of its actual replica groups (a permute: its
    slowest pair's α + S/B), with :math:`c_i` worker i's compute seconds from
    ``cluster.compute`` (``flops``: XLA's cost analysis of the compiled per-device step;
    ``measured``: the median wall time of ``repeats`` calls here after a warm-up, which
    includes this machine's own collectives) divided by its speed. Stragglers are not drawn.

    Args:
      jitted_step: a step already lifted over the workers (``jax.jit`` of a ``shard_map``);
        wrapped in ``jax.jit`` if it has no ``lower``.
      args: a tuple of example arguments (arrays, or ``jax.ShapeDtypeStruct`` s; those are
        filled with zeros when the step must be timed).
      cluster: the cluster; sized for the compiled program's devices (``for_workers``).
      repeats: timed calls for ``compute=measured``.

    Returns:
      an :class:`Estimate`.
    """
    from jdo.comm.cost import hlo_collective_ops, hlo_num_devices  # comm may import system

    if not isinstance(cluster, Cluster):
        raise checks.WrongType("cluster", f"must be a jdo.system.Cluster, got {cluster!r}")
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise checks.WrongType("args", f"must be a tuple of example arguments, got {args!r}")
    repeats = checks.positive_int("repeats", repeats)
    jitted = jitted_step if hasattr(jitted_step, "lower") else jax.jit(jitted_step)
    compiled = jitted.lower(*args).compile()
    hlo = compiled.as_text()
    workers = hlo_num_devices(hlo) or 1
    cluster = cluster.for_workers(workers)
    ops = tuple(price(cluster, op) for op in hlo_collective_ops(hlo, num_devices=workers))
    profile = _profile(cluster.compute.needs, jitted, compiled, args, repeats)
    compute_s = max(cluster.compute_seconds(w, profile) for w in range(workers))
    comm_s = sum(op.seconds * op.count for op in ops)
    return Estimate(
        ops=ops,
        comm_s=comm_s,
        compute_s=compute_s,
        total_s=compute_s + comm_s,
        wire_bytes=sum(op.wire_bytes * op.count for op in ops),
        workers=workers,
        profile=profile,
    )


def price(cluster: Cluster, op) -> OpEstimate:
    """One collective operation (a ``jdo.comm.CollectiveOp``) priced on ``cluster``, with
    the node layout of its actual device groups: a permute takes its slowest pair's message
    time (its pairs run concurrently)."""
    if op.kind == "collective-permute" and op.groups:
        seconds = max(cluster.message_time(a, b, op.nbytes) for a, b in op.groups)
        wire = cluster.wire_bytes(op.kind, op.nbytes, op.group_size)
    else:
        layout = None if op.groups is None else cluster.group_layout(op.groups)
        seconds = cluster.collective_time(op.kind, op.nbytes, op.group_size, layout)
        wire = cluster.wire_bytes(op.kind, op.nbytes, op.group_size, layout)
    return OpEstimate(op.kind, op.nbytes, op.group_size, op.count, seconds, wire)


def wire_bytes(op, cluster: Cluster | None = None) -> float:
    """Bytes one worker sends in ONE run of the collective ``op`` (a ``jdo.comm.CollectiveOp``)
    under ``cluster``'s collective algorithm; without a cluster, under the ring algorithms
    (all-reduce ``2(n-1)/n S``, all-gather ``(n-1)/n S_out``, a permute ``S``: see
    :func:`jdo.system.cluster.ring_cost`)."""
    if cluster is not None:
        return price(cluster, op).wire_bytes
    return ring_cost(op.kind, op.nbytes, op.group_size)[2] if op.group_size > 1 else 0.0


def _profile(needs: str | None, jitted, compiled, args, repeats: int) -> StepProfile:
    if needs == "flops":
        analysis = compiled.cost_analysis()
        if isinstance(analysis, Sequence):  # older jax: one dict per computation
            analysis = analysis[0]
        return StepProfile(flops=float(analysis.get("flops", 0.0)))
    if needs == "seconds":
        return StepProfile(seconds=time_step(jitted, args, repeats))
    return StepProfile()


def time_step(step: Callable, args: Sequence, repeats: int = 5) -> float:
    """Median wall seconds of ``repeats`` calls of ``step(*args)`` after one warm-up call (which
    also compiles), each waited for (``block_until_ready``); ``ShapeDtypeStruct`` arguments are
    filled with zeros."""
    args = [_materialize(a) for a in args]
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _materialize(arg):
    def leaf(x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        zeros = jnp.zeros(x.shape, x.dtype)
        sharding = getattr(x, "sharding", None)
        return zeros if sharding is None else jax.device_put(zeros, sharding)

    return jax.tree.map(leaf, arg)
