"""ClippedGossip: Byzantine-robust gossip of the parameters as an optax transform."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.comm.robust_gossip import clipped_mix, gossip_faults
from jdo.faults import is_directed
from jdo.topology import Topology, check_topology


class ClippedGossipState(NamedTuple):
    count: jax.Array  # int32: updates so far (selects W(t), the lost links and the attack draw)


def clipped_gossip(
    topology: Topology,
    tau: float | None = None,
    *,
    clip_farthest: int = 1,
    faults=None,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""Mixes the parameters with the neighbours, each neighbour's pull clipped (ClippedGossip).

    Placed last in a chain after an optimizer producing the local update :math:`u_i`, with
    :math:`y_i = x_i + u_i` the locally updated parameters it lands on

    .. math:: x_i \leftarrow y_i + \sum_{j \ne i} W(t)_{ij}\,\mathrm{clip}_{\tau}(y_j - y_i),
              \qquad \mathrm{clip}_\tau(z) = z\,\min(1, \tau / \lVert z \rVert),

    the norm over the whole flattened pytree (He, Karimireddy & Jaggi 2022, "Byzantine-robust
    decentralized learning via ClippedGossip"; the self-centred clipping of its later
    version). A neighbour, honest or Byzantine, moves :math:`x_i` by at most
    :math:`W_{ij}\tau`; with ``tau = inf`` it is D-PSGD's gossip. The paper's guarantee needs
    a small Byzantine weight :math:`\delta_i = \sum_{j\ \text{Byzantine}} W_{ij}` at every
    honest worker (relative to the honest subgraph's spectral gap) and a radius of the order
    of the honest neighbours' spread; ``tau=None`` picks the radius per worker and step from
    the distances it sees (:func:`jdo.comm.robust_gossip.adaptive_tau`: the
    ``clip_farthest`` farthest neighbours are cut to the next one's distance, the rule of the
    authors' released code); the paper's theoretical radius needs the honest variance and
    :math:`\delta_i`, which no worker knows.

    Needs ``params`` in ``update``. Under ``shard_map`` or ``vmap`` over ``axis_name``; the
    topology's size must equal the number of workers. Bytes: those of one gossip step.

    Args:
      topology: a doubly stochastic :class:`~jdo.topology.Topology`.
      tau: the clipping radius (> 0; ``math.inf``: no clipping), or None (adaptive).
      clip_farthest: with ``tau=None``, how many of its farthest neighbours each worker cuts.
      faults: None, ``jdo.faults.byzantine(workers, attack)`` (their messages are forged at
        each receiver from what the attacker can know on gossip: :mod:`jdo.comm.robust_gossip`;
        a Byzantine worker's own parameters keep training honestly), ``link_drop(p)``,
        ``node_crash(workers, at_step)`` (without rejoin: a rejoining model would be clipped
        back towards its stale value) or a list of them. The t-th update (from 0) uses
        ``delivered(t, W, directed=jdo.faults.is_directed(topology))``; a lost message
        contributes nothing and a down worker does not move.
      axis_name: the workers' named axis.
    """
    check_topology("topology", topology, ("doubly",), purpose="clipped_gossip")
    if tau is not None:
        tau = checks.positive("tau", tau)
    checks.positive_int("clip_farthest", clip_farthest)
    network, byzantine = gossip_faults("faults", faults)
    if network is not None:
        network.check(topology.n)
        if network.rejoins:
            raise checks.InvalidArgument(
                "faults",
                "node_crash with rejoin_step is not taken by clipped_gossip (the rejoining "
                "worker's stale model would clip its neighbours' pull): use rejoin_step=None",
            )
    if byzantine is not None:
        byzantine.check(topology.n)
    directed = is_directed(topology)

    def init_fn(params):
        del params
        return ClippedGossipState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by clipped_gossip: call update(updates, state, params)"
            )
        local = optax.apply_updates(params, updates)
        n, me = topology.n, axis_index(axis_name)
        delivered = None if network is None else network.delivered_traced(state.count, n, directed)
        mixed = clipped_mix(
            local,
            topology,
            tau,
            state.count,
            axis_name,
            clip_farthest=clip_farthest,
            delivered=delivered,
            byzantine=byzantine,
        )
        new_updates = jax.tree.map(lambda m, p: (m - p).astype(p.dtype), mixed, params)
        if network is not None and network.crashes:  # a down worker does not move
            up = network.alive_traced(state.count, n)[me]
            new_updates = jax.tree.map(lambda u: jnp.where(up, u, 0), new_updates)
        return new_updates, ClippedGossipState(state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class ClippedGossip:
    """ClippedGossip's hyperparameters as a value (:func:`clipped_gossip`): what
    ``jdo.algorithms.dpsgd(..., aggregator=ClippedGossip(tau=1.0))`` and the Hydra group
    ``aggregator=clipped_gossip`` hold."""

    tau: float | None = None
    clip_farthest: int = 1

    def __post_init__(self):
        if self.tau is not None:
            checks.positive("tau", self.tau)
        checks.positive_int("clip_farthest", self.clip_farthest)

    def check(self, num_workers: int, byzantine: int = 0) -> ClippedGossip:
        """Nothing global to check: the guarantee is local (each honest worker's Byzantine
        weight :math:`\\delta_i`), set by the topology. Returns ``self``."""
        checks.positive_int("num_workers", num_workers)
        checks.non_negative_int("byzantine", byzantine)
        return self

    def transform(self, topology: Topology, *, faults=None, axis_name: str = WORKERS):
        """The :func:`clipped_gossip` transform over ``topology``."""
        return clipped_gossip(
            topology, self.tau, clip_farthest=self.clip_farthest, faults=faults, axis_name=axis_name
        )

    def __str__(self) -> str:
        return f"clipped_gossip(tau={self.tau!r}, clip_farthest={self.clip_farthest})"
