"""Gossip averaging of the parameters as an optax transform."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.comm.control import cond
from jdo.comm.gossip import mix_rounds
from jdo.comm.robust_gossip import gossip_faults
from jdo.faults import is_directed, rejoining
from jdo.topology import Topology, check_topology
from jdo.transforms.clipped_gossip import clipped_gossip


class GossipState(NamedTuple):
    count: jax.Array  # int32: updates seen so far (selects W(t) and the periodic schedule)


def gossip(
    topology: Topology,
    *,
    every: int = 1,
    rounds: int = 1,
    axis_name: str = WORKERS,
    faults=None,
) -> optax.GradientTransformation:
    r"""Mixes the parameters with the neighbours after the local update (adapt-then-combine).

    Placed last in a chain after an optimizer producing the local update :math:`u_i`, it turns
    the update into one that lands on the gossip average of the locally updated parameters:

    .. math:: x_i \leftarrow \sum_j W(t)_{ij}\,(x_j + u_j),

    which is D-PSGD in its adapt-then-combine form (Lian et al. 2017, "Can Decentralized
    Algorithms Outperform Centralized Algorithms?"):
    ``optax.chain(optax.sgd(0.1), jdo.transforms.gossip(jdo.topology.ring(8)))``.
    With ``every=H`` the mixing happens on every H-th update only (periodic gossip; local steps
    in between); ``rounds=R`` mixes R times in a row (``W(t)^R`` for a static topology).

    Needs ``params`` in ``update``. Under ``shard_map`` or ``vmap`` over ``axis_name``; the
    topology's size must equal the number of workers.

    With ``faults`` (:mod:`jdo.faults`), the t-th update (counted from 0 by this transform)
    mixes with :math:`W_{\text{eff}}(t)` = ``topology.effective_matrix(e, M)`` where ``M =
    faults.delivered(t, W, directed=jdo.faults.is_directed(topology))`` and ``e`` the gossip
    event (``t // every``): a lost message's weight goes to the receiver's own value (on an
    undirected graph every :math:`W_{\text{eff}}(t)` stays doubly stochastic; on a directed
    one, row stochastic only). A crashed worker (``node_crash``) neither sends nor updates
    (its update is zero while down) and, on its first mixing after coming back, takes the
    weighted mean of the neighbours it hears from.

    Args:
      topology: a doubly stochastic :class:`~jdo.topology.Topology` (mixing keeps the mean).
      every: mix on updates ``0, H, 2H, ...``.
      rounds: gossip steps per mixing.
      axis_name: the workers' named axis.
      faults: None, a network fault (``jdo.faults.link_drop(p)``, ``node_crash(...)``),
        ``jdo.faults.byzantine(workers, attack)`` (their messages forged at each receiver, as
        in :func:`jdo.transforms.clipped_gossip` with ``tau=inf``) or a list of them.
    """
    check_topology(
        "topology",
        topology,
        ("doubly",),
        purpose="gossip (mixing must keep the worker mean; push_sum takes directed graphs)",
    )
    checks.positive_int("every", every)
    checks.positive_int("rounds", rounds)
    faults, byzantine = gossip_faults("faults", faults)
    if byzantine is not None:  # Byzantine senders: the clipped path without clipping
        if every != 1 or rounds != 1:
            raise checks.InvalidArgument("faults", "byzantine(...) needs every=1 and rounds=1")
        return clipped_gossip(topology, math.inf, faults=[faults, byzantine], axis_name=axis_name)
    if faults is not None:
        faults.check(topology.n)
    directed = is_directed(topology)

    def init_fn(params):
        del params
        return GossipState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by gossip: call update(updates, state, params)"
            )
        local = optax.apply_updates(params, updates)
        event = state.count // every  # the gossip event's index selects W(t)
        lost = {}
        if faults is not None:
            n, me = topology.n, axis_index(axis_name)
            lost["delivered"] = faults.delivered_traced(state.count, n, directed)[me]
            if faults.rejoins:  # down at any update since the last mixing
                lost["rejoining"] = rejoining(faults, state.count, n, every)[me]
        gossip_now = lambda x: mix_rounds(x, topology, event, rounds, axis_name, **lost)
        if every == 1:
            mixed = gossip_now(local)
        else:
            mixed = cond(state.count % every == 0, gossip_now, lambda x: x, local)
        new_updates = jax.tree.map(lambda m, p: (m - p).astype(p.dtype), mixed, params)
        if faults is not None and faults.crashes:  # a down worker does not move
            up = faults.alive_traced(state.count, topology.n)[axis_index(axis_name)]
            new_updates = jax.tree.map(lambda u: jnp.where(up, u, 0), new_updates)
        return new_updates, GossipState(state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)
