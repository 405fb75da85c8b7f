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
from jdo._logical import axis_index, axis_size, levels, ppermute
from jdo.comm.collectives import gather_mean, mean, varying
from jdo.system import clock
from jdo.topology import Schedule, Topology, make_schedule


def _check_size(topology: Topology, axis_name: str) -> None:
    workers = axis_size(axis_name)
    if workers != topology.n:
        raise checks.InvalidArgument(
            "topology",
            f"must have as many nodes as workers: {topology!r} has {topology.n} "
            f"nodes but the {axis_name!r} axis has {workers} workers",
        )


def _apply(
    schedule: Schedule,
    x,
    axis_name: str,
    decode,
    delivered=None,
    rejoining=None,
    lost_to="receiver",
):
    if delivered is not None:
        return _apply_delivered(schedule, x, axis_name, decode, delivered, rejoining, lost_to)
    me = axis_index(axis_name)

    def weight(values, like):
        return jnp.asarray(np.asarray(values), like.dtype)[me]

    out = jax.tree.map(lambda a: weight(schedule.self_weights, a) * a, decode(x))
    clock.exchange([perm for perm, _ in schedule.rounds], clock.tree_bytes(x), axis_name)
    for perm, weights in schedule.rounds:
        received = decode(ppermute(x, axis_name, perm))
        out = jax.tree.map(lambda o, r, w=weights: o + weight(w, r) * r, out, received)
    return out


def _sent_but_lost(perm, w, delivered, me) -> jax.Array:
    """The weight my message of this round carried if it was lost (0 if it arrived)."""
    dest = np.arange(len(w))
    for src, dst in perm:
        dest[src] = dst
    to = jnp.asarray(dest)[me]
    w_out = jnp.asarray(np.asarray(w, np.float32))[to]  # what my receiver weighs me by
    return jnp.where(delivered[to, me], 0, w_out)


def _apply_delivered(
    schedule: Schedule, x, axis_name: str, decode, delivered, rejoining, lost_to="receiver"
):
    """:func:`_apply` when only the ``delivered`` links work: a message that did not arrive is
    never read (``where``, so a NaN in it goes nowhere), its weight goes to the receiver's own
    value (``lost_to="sender"``: to the sender's, which needs the full ``[W, W]`` mask), and a
    ``rejoining`` worker takes the weighted mean of what reached it instead."""
    me = axis_index(axis_name)
    row = delivered[me] if jnp.ndim(delivered) == 2 else delivered  # [W]: j's message arrives
    arrived, weights = [], []
    kept_back = jnp.zeros((), jnp.float32)  # lost_to="sender": my lost messages' weights
    for perm, w in schedule.rounds:
        sender = np.arange(len(w))
        for src, dst in perm:
            sender[dst] = src
        w_me = jnp.asarray(np.asarray(w, np.float32))[me]
        arrived.append(row[jnp.asarray(sender)[me]] & (w_me != 0))
        weights.append(w_me)
        if lost_to == "sender":
            kept_back = kept_back + _sent_but_lost(perm, w, delivered, me)
    clock.exchange([p for p, _ in schedule.rounds], clock.tree_bytes(x), axis_name, arrived)
    own = decode(x)
    received = jax.tree.map(jnp.zeros_like, own)
    kept = lost = jnp.zeros((), jnp.float32)
    for (perm, _), ok, w in zip(schedule.rounds, arrived, weights, strict=True):
        r = decode(ppermute(x, axis_name, perm))
        add = lambda o, v, ok=ok, w=w: o + jnp.where(ok, w.astype(v.dtype) * v, 0)
        received = jax.tree.map(add, received, r)
        kept, lost = kept + jnp.where(ok, w, 0), lost + jnp.where(ok, 0, w)
    own_weight = jnp.asarray(np.asarray(schedule.self_weights, np.float32))[me]
    self_weight = own_weight + (kept_back if lost_to == "sender" else lost)
    out = jax.tree.map(lambda a, v: self_weight.astype(a.dtype) * a + v, own, received)
    if rejoining is None:
        return out
    take = jnp.asarray(rejoining) & (kept > 0)
    safe = jnp.where(kept > 0, kept, 1)
    return jax.tree.map(lambda o, v: jnp.where(take, v / safe.astype(v.dtype), o), out, received)


def mix(
    x,
    topology: Topology,
    step=0,
    axis_name: str = WORKERS,
    *,
    decode=None,
    delivered=None,
    rejoining=None,
    lost_to: str = "receiver",
):
    """One gossip step: ``x_i ← Σ_j W(step)_ij x_j`` for a pytree ``x`` (one worker's value).

    Args:
      x: this worker's pytree.
      topology: the graph; its size must equal the number of workers on ``axis_name``.
      step: int (Python or traced) selecting ``W(step)`` of a time-varying topology.
      axis_name: the workers' named axis.
      decode: if given, ``x`` is a compressed payload: what travels is the payload, and the
        result is ``Σ_j W_ij decode(x_j)`` (compressed gossip, as in CHOCO-SGD).
      delivered: traced bool, the ``[W, W]`` delivered-links mask (``[i, j]``: j's message
        reaches i; :mod:`jdo.faults`) or this worker's row ``[W]``; None: every link works.
        Then ``x ← W_eff x`` with ``W_eff = topology.effective_matrix(step, delivered)``: a
        lost message is never read and its weight goes to the receiver's own value. The
        complete graph then mixes with W − 1 ppermutes instead of an all-reduce.
      rejoining: traced bool (this worker's): with ``delivered``, a worker coming back from a
        crash takes ``Σ_j W_ij x_j / Σ_j W_ij`` over the neighbours whose message arrived (its
        own stale value left out; kept if nothing arrived).
      lost_to: with ``delivered``, who keeps a lost message's weight: ``"receiver"`` (rows keep
        their sums: doubly stochastic stays doubly stochastic on an undirected graph) or
        ``"sender"`` (push-sum: columns keep their sums, so ``Σ_i x_i`` is conserved; needs the
        full ``[W, W]`` mask, i.e. a sender that learns its message was lost).
        ``topology.effective_matrix(step, delivered, lost_to=...)`` is the matrix applied.
    """
    _check_size(topology, axis_name)
    checks.one_of("lost_to", lost_to, ("receiver", "sender"))
    if lost_to == "sender" and delivered is not None and jnp.ndim(delivered) != 2:
        raise checks.InvalidArgument("delivered", "must be the [W, W] mask for lost_to='sender'")
    if lost_to == "sender" and rejoining is not None:
        raise checks.InvalidArgument("rejoining", "is only taken with lost_to='receiver'")
    if topology.n == 1:  # W = [1]: nothing to send (not even to itself)
        return x if decode is None else decode(x)
    if topology.is_complete and delivered is None:  # typed per-worker again, like any graph
        if decode is not None:
            return varying(gather_mean(x, decode, axis_name), axis_name)
        return varying(mean(x, axis_name), axis_name)
    decode = decode or (lambda v: v)
    faults = {"delivered": delivered, "rejoining": rejoining, "lost_to": lost_to}
    branches = [
        functools.partial(_apply, s, axis_name=axis_name, decode=decode, **faults)
        for s in topology.schedules
    ]
    if len(branches) == 1:
        return branches[0](x)
    return clock.switch(jnp.asarray(step, jnp.int32) % len(branches), branches, x)


def mix_rounds(
    x,
    topology: Topology,
    step=0,
    rounds: int = 1,
    axis_name: str = WORKERS,
    *,
    delivered=None,
    rejoining=None,
):
    """``rounds`` consecutive gossip steps with ``W(step·rounds), ..., W(step·rounds+rounds−1)``
    (with ``delivered``: the same links lost in every round; ``rejoining`` acts in the first)."""
    for r in range(rounds):
        rejoin = rejoining if r == 0 else None
        x = mix(x, topology, step * rounds + r, axis_name, delivered=delivered, rejoining=rejoin)
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
    ``g − 1`` ppermutes (the block-diagonal averaging matrix, edge-coloured); on a two-level
    ``(nodes, local)`` mesh whose nodes are the groups, one all-reduce inside each node
    (``2(g−1)/g · M`` per worker instead of ``(g−1) · M``)."""
    n = axis_size(axis_name)
    checks.positive_int("group_size", group_size)
    if n % group_size:
        raise checks.InvalidArgument("group_size", f"must divide the {n} workers, got {group_size}")
    if group_size == n:
        return varying(mean(x, axis_name), axis_name)
    two_level = levels(axis_name)
    if two_level is not None and jax.lax.axis_size(two_level[1]) == group_size:
        clock.group_barrier("all-reduce", clock.tree_bytes(x), group_size, axis_name)
        return jax.lax.pmean(x, two_level[1])
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
