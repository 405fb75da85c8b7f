r"""Byzantine-robust neighbour mixing (ClippedGossip), written for one worker.

``clipped_mix(x, topology, tau, step)`` gives worker i

.. math:: x_i + \sum_{j \ne i} W(\text{step})_{ij}\, \mathrm{clip}_\tau(x_j - x_i), \qquad
          \mathrm{clip}_\tau(z) = z \cdot \min(1, \tau / \lVert z \rVert),

the norm over the whole flattened pytree (He, Karimireddy & Jaggi 2022, "Byzantine-robust
decentralized learning via ClippedGossip", arXiv:2202.01545). With ``tau = inf`` it is plain
gossip ``Σ_j W_ij x_j`` for a row-stochastic W. The messages travel as in
:func:`jdo.comm.mix`: one ``ppermute`` per round of the topology's static schedule.

**Byzantine neighbours** (``byzantine=jdo.faults.byzantine(workers, attack)``): every message a
Byzantine worker sends is replaced, at its receiver, by the attack computed from what the
attacker can know on gossip: the receiver's (its victim's) own model and the models of the
victim's honest neighbours that reached it this step: mean :math:`\mu` and coordinate-wise
population standard deviation :math:`\sigma` of those rows. ``sign_flip`` sends
:math:`-\mu`, ``ipm(eps)`` :math:`-\varepsilon\mu`, ``alie(z)`` :math:`\mu - z\sigma`
(``z=None``: :func:`jdo.faults.alie_z` of the global W and f), as the authors' code does for its
decentralized ALIE and IPM ("the target and its good neighbours"); ``gaussian(std)`` sends
noise drawn by the sender (``fold_in(fold_in(key(seed), sender), step)`` folded with the leaf
index, as under :func:`jdo.transforms.robust_all_reduce`). A Byzantine worker may so send a
different model to each neighbour, which point-to-point messages allow. ``label_flip`` forges
no message (the loss flips the labels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index, axis_size, ppermute
from jdo.faults import (
    ALIE,
    IPM,
    Byzantine,
    Gaussian,
    LabelFlip,
    NetworkFault,
    SignFlip,
    alie_z,
    network_faults,
)
from jdo.system import clock
from jdo.system.stragglers import draw_key
from jdo.topology import Schedule, Topology

GOSSIP_ATTACKS = (SignFlip, IPM, ALIE, Gaussian, LabelFlip)


def gossip_faults(name: str, value) -> tuple[NetworkFault | None, Byzantine | None]:
    """A gossip transform's ``faults`` (None, one model or a list) split into the network
    faults (:func:`jdo.faults.network_faults`) and at most one :class:`~jdo.faults.Byzantine`."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    byzantine = [v for v in items if isinstance(v, Byzantine)]
    if len(byzantine) > 1:
        raise checks.InvalidArgument(name, "takes at most one jdo.faults.byzantine(...)")
    if byzantine and not isinstance(byzantine[0].attack, GOSSIP_ATTACKS):
        raise checks.InvalidArgument(
            name, f"attack {byzantine[0].attack.name} is not defined on gossip messages"
        )
    rest = [v for v in items if v is not None and not isinstance(v, Byzantine)]
    network = network_faults(name, rest) if rest else None
    return network, (byzantine[0] if byzantine else None)


def _norm(tree) -> jax.Array:
    """The Euclidean norm of a whole pytree (float32)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in jax.tree.leaves(tree)))


def adaptive_tau(norms: jax.Array, valid: jax.Array, clip_farthest: int) -> jax.Array:
    """The ``(clip_farthest + 1)``-th largest of the ``valid`` distances (their smallest when
    fewer are valid; inf when none): only the ``clip_farthest`` farthest neighbours are cut."""
    ranked = jnp.sort(jnp.where(valid, norms, -jnp.inf))[::-1]  # descending, invalid last
    count = valid.sum()
    tau = ranked[jnp.clip(jnp.minimum(clip_farthest, count - 1), 0)]
    return jnp.where(count > 0, tau, jnp.inf)


def _victim_stats(own: jax.Array, received: list, honest: jax.Array):
    """Mean and population std of one leaf over ``own`` and the ``honest`` received rows."""
    m = jnp.concatenate([jnp.ones((1,), jnp.float32), honest.astype(jnp.float32)])
    mask = m.reshape((-1,) + (1,) * own.ndim)
    rows = jnp.stack([own, *received]).astype(jnp.float32)
    rows = jnp.where(mask > 0, rows, 0)  # a lost (maybe NaN) message is never read
    mu = (mask * rows).sum(0) / m.sum()
    return mu, jnp.sqrt((mask * jnp.square(rows - mu)).sum(0) / m.sum())


def _forge_leaf(byzantine: Byzantine, own, received, honest, n: int):
    """The forged value of one leaf that every Byzantine neighbour delivers to this worker."""
    attack = byzantine.attack
    mu, sd = _victim_stats(own, received, honest)
    if isinstance(attack, SignFlip):
        fake = -mu
    elif isinstance(attack, IPM):
        fake = -jnp.float32(attack.eps) * mu
    else:  # ALIE
        z = attack.z if attack.z is not None else alie_z(n, byzantine.f)
        fake = mu - jnp.float32(z) * sd
    return fake.astype(own.dtype)


def _forged(byzantine: Byzantine, own, received, honest, senders, step, n: int):
    """What each round's Byzantine sender delivers to this worker (one pytree per round)."""
    leaves, treedef = jax.tree.flatten(own)
    if isinstance(byzantine.attack, Gaussian):
        key, std = jax.random.key(byzantine.seed), byzantine.attack.std

        def noise(sender):
            k = draw_key(key, sender, jnp.asarray(step, jnp.int32))
            draw = lambda i, v: std * jax.random.normal(jax.random.fold_in(k, i), v.shape)
            return [draw(i, v).astype(v.dtype) for i, v in enumerate(leaves)]

        return [jax.tree.unflatten(treedef, noise(s)) for s in senders]
    per_round = [jax.tree.leaves(r) for r in received]
    fake = [
        _forge_leaf(byzantine, v, [r[i] for r in per_round], honest, n)
        for i, v in enumerate(leaves)
    ]
    return [jax.tree.unflatten(treedef, fake)] * len(senders)


def _clip_scale(norm: jax.Array, tau) -> jax.Array:
    """``min(1, tau / norm)``, 1 for a zero difference."""
    over = norm > tau
    return jnp.where(over, tau / jnp.where(over, norm, 1), 1.0)


def _apply_clipped(schedule: Schedule, x, axis_name, tau, clip_farthest, row, byzantine, step):
    n, me = len(schedule.self_weights), axis_index(axis_name)
    senders, weights, valid = [], [], []
    for perm, w in schedule.rounds:
        sender = np.arange(n)
        for src, dst in perm:
            sender[dst] = src
        senders.append(jnp.asarray(sender)[me])
        weights.append(jnp.asarray(np.asarray(w, np.float32))[me])
        ok = weights[-1] != 0  # a padding pair of the permutation carries no weight
        valid.append(ok if row is None else ok & row[senders[-1]])
    clock.exchange([p for p, _ in schedule.rounds], clock.tree_bytes(x), axis_name, valid)
    received = [ppermute(x, axis_name, perm) for perm, _ in schedule.rounds]
    valid = jnp.stack(valid)
    if byzantine is not None and not isinstance(byzantine.attack, LabelFlip):
        bad = jnp.asarray(byzantine.mask(n))[jnp.stack(senders)] & valid
        fakes = _forged(byzantine, x, received, valid & ~bad, senders, step, n)
        pick = lambda b, f, r: jax.tree.map(lambda u, v: jnp.where(b, u, v), f, r)
        received = [pick(bad[r], fakes[r], received[r]) for r in range(len(received))]
    diffs = [jax.tree.map(lambda r, o: r - o, rec, x) for rec in received]
    norms = jnp.stack([_norm(d) for d in diffs])
    if tau is None:
        tau = adaptive_tau(norms, valid, clip_farthest)
    coef = jnp.stack(weights) * _clip_scale(norms, tau)

    def combine(o, *ds):
        terms = [jnp.where(valid[r], coef[r].astype(o.dtype) * d, 0) for r, d in enumerate(ds)]
        return o + sum(terms)

    return jax.tree.map(combine, x, *diffs)


def clipped_mix(
    x,
    topology: Topology,
    tau: float | None,
    step=0,
    axis_name: str = WORKERS,
    *,
    clip_farthest: int = 1,
    delivered=None,
    byzantine: Byzantine | None = None,
    attack_step=None,
):
    r"""One ClippedGossip step for this worker's pytree ``x`` (module docstring):
    :math:`x_i + \sum_{j \ne i} W_{ij}\,\mathrm{clip}_\tau(x_j - x_i)`.

    Args:
      x: this worker's pytree.
      topology: the graph (``W(step)``); its size must equal the number of workers.
      tau: the clipping radius (``inf``: plain gossip), or None: adaptive, each worker cuts
        only its ``clip_farthest`` farthest neighbours, at the next one's distance
        (:func:`adaptive_tau`; with ``clip_farthest=1`` the rule of the authors' released
        code, epfml/byzantine-robust-decentralized-optimizer).
      step: int (Python or traced) selecting ``W(step)``.
      axis_name: the workers' named axis.
      clip_farthest: see ``tau``.
      delivered: traced bool ``[W, W]`` (``[i, j]``: j's message reaches i) or this worker's row
        ``[W]``; a lost message contributes nothing (its weight stays with the receiver).
      byzantine: Byzantine senders whose messages are forged at their receivers.
      attack_step: the step the attack draws with (default ``step``).
    """
    workers = axis_size(axis_name)
    if workers != topology.n:
        raise checks.InvalidArgument(
            "topology", f"has {topology.n} nodes but the {axis_name!r} axis has {workers} workers"
        )
    if topology.n == 1:
        return x
    me = axis_index(axis_name)
    row = None if delivered is None else (delivered[me] if jnp.ndim(delivered) == 2 else delivered)
    at = step if attack_step is None else attack_step
    branches = [
        functools.partial(
            _apply_clipped,
            s,
            axis_name=axis_name,
            tau=tau,
            clip_farthest=clip_farthest,
            row=row,
            byzantine=byzantine,
            step=at,
        )
        for s in topology.schedules
    ]
    if len(branches) == 1:
        return branches[0](x)
    return clock.switch(jnp.asarray(step, jnp.int32) % len(branches), branches, x)
