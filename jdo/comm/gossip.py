"""Neighbour mixing over a topology, written for one worker, with dense numpy references.

``mix(x, topology, step)`` gives worker i the value ``Σ_j W(step)_ij x_j``: its own value times
``W_ii`` plus one ``ppermute`` per round of the topology's static schedule, each scaled by a
per-receiver weight. The complete graph is one ``pmean``. A time-varying topology picks its
schedule with ``lax.switch`` on ``step mod T``: no recompilation as the step advances, and every
branch is compiled once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm.collectives import gather_mean, mean, varying
from jdo.system import clock
from jdo.topology import Schedule, Topology, make_schedule


def _check_size(topology: Topology, axis_name: str) -> None:
    workers = jax.lax.axis_size(axis_name)
    if workers != topology.n:
        raise checks.InvalidArgument(
            "topology",
            f"must have as many nodes as workers: {topology!r} has {topology.n} "
            f"nodes but the {axis_name!r} axis has {workers} workers",
        )


def _apply(schedule: Schedule, x, axis_name: str, decode):
    me = jax.lax.axis_index(axis_name)

    def weight(values, like):
        return jnp.asarray(np.asarray(values), like.dtype)[me]

    out = jax.tree.map(lambda a: weight(schedule.self_weights, a) * a, decode(x))
    clock.exchange([perm for perm, _ in schedule.rounds], clock.tree_bytes(x), axis_name)
    for perm, weights in schedule.rounds:
        received = decode(jax.lax.ppermute(x, axis_name, perm))
        out = jax.tree.map(lambda o, r, w=weights: o + weight(w, r) * r, out, received)
    return out


def mix(x, topology: Topology, step=0, axis_name: str = WORKERS, *, decode=None):
    """One gossip step: ``x_i ← Σ_j W(step)_ij x_j`` for a pytree ``x`` (one worker's value).

    Args:
      x: this worker's pytree.
      topology: the graph; its size must equal the number of workers on ``axis_name``.
      step: int (Python or traced) selecting ``W(step)`` of a time-varying topology.
      axis_name: the workers' named axis.
      decode: if given, ``x`` is a compressed payload: what travels is the payload, and the
        result is ``Σ_j W_ij decode(x_j)`` (compressed gossip, as in CHOCO-SGD).
    """
    _check_size(topology, axis_name)
    if topology.n == 1:  # W = [1]: nothing to send (not even to itself)
        return x if decode is None else decode(x)
    if topology.is_complete:  # typed per-worker again, like the result of any other graph
        if decode is not None:
            return varying(gather_mean(x, decode, axis_name), axis_name)
        return varying(mean(x, axis_name), axis_name)
    decode = decode or (lambda v: v)
    branches = [
        functools.partial(_apply, s, axis_name=axis_name, decode=decode) for s in topology.schedules
    ]
    if len(branches) == 1:
        return branches[0](x)
    return clock.switch(jnp.asarray(step, jnp.int32) % len(branches), branches, x)


def mix_rounds(x, topology: Topology, step=0, rounds: int = 1, axis_name: str = WORKERS):
    """``rounds`` consecutive gossip steps with ``W(step·rounds), ..., W(step·rounds+rounds−1)``."""
    for r in range(rounds):
        x = mix(x, topology, step * rounds + r, axis_name)
    return x


def neighbour_sum(x, topology: Topology, axis_name: str = WORKERS, step: int = 0):
    """``Σ_{j ∈ N_i} x_j`` over the neighbours of ``topology`` at ``step`` (W_ij > 0, j ≠ i),
    with unit weights: one ppermute per round of the topology's schedule."""
    _check_size(topology, axis_name)
    w = topology.mixing_matrix(step)
    adjacency = ((w > 0) & ~np.eye(topology.n, dtype=bool)).astype(np.float64)
    return _apply(make_schedule(adjacency), x, axis_name, lambda v: v)


def group_mean(x, group_size: int, axis_name: str = WORKERS):
    """Mean within consecutive groups of ``group_size`` workers (workers ``[k·g, (k+1)·g)``):
    ``g − 1`` ppermutes (the block-diagonal averaging matrix, edge-coloured)."""
    n = jax.lax.axis_size(axis_name)
    checks.positive_int("group_size", group_size)
    if n % group_size:
        raise checks.InvalidArgument("group_size", f"must divide the {n} workers, got {group_size}")
    if group_size == n:
        return varying(mean(x, axis_name), axis_name)
    block = np.kron(np.eye(n // group_size), np.full((group_size, group_size), 1.0 / group_size))
    return _apply(make_schedule(block), x, axis_name, lambda v: v)


def gossip_average(x, topology: Topology, steps: int, axis_name: str = WORKERS):
    """Plain consensus averaging: ``steps`` gossip steps ``x ← W(t) x``, t = 0..steps−1
    (in a ``fori_loop``). Tends to the workers' average for a doubly stochastic topology."""
    return clock.fori_loop(0, steps, lambda t, v: mix(v, topology, t, axis_name), x)


def push_sum_average(x, topology: Topology, steps: int, axis_name: str = WORKERS):
    """Push-sum consensus (Kempe et al. 2003): mixes ``(x, w=1)`` ``steps`` times and returns
    ``x / w``, which tends to the workers' true average on any strongly connected
    column-stochastic (e.g. directed, time-varying) topology, where plain gossip does not."""
    weight = varying(jnp.ones((), jnp.float32), axis_name)
    body = lambda t, carry: mix(carry, topology, t, axis_name)
    num, weight = clock.fori_loop(0, steps, body, (x, weight))
    return jax.tree.map(lambda a: a / weight.astype(a.dtype), num)


def mix_reference(xs: np.ndarray, topology: Topology, step: int = 0) -> np.ndarray:
    """Dense reference for :func:`mix` on stacked ``xs: [W, ...]``: ``W(step) @ xs``."""
    xs = np.asarray(xs)
    return np.tensordot(topology.mixing_matrix(step), xs, axes=(1, 0)).astype(xs.dtype)
