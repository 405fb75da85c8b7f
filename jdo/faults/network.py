r"""Network faults: lost links (:func:`link_drop`) and crashed workers (:func:`node_crash`).

Each model answers two questions for any step, host-side (numpy, for tests, notebooks and
plots) and traced (JAX, inside the jitted step), with bit-identical answers (the host-side view
runs the traced function on the CPU):

- ``delivered(step, num_workers, directed=False)``: a ``[W, W]`` bool mask, entry ``[i, j]``
  True when the message from j to i arrives at that step (the diagonal is always True);
- ``alive(step, num_workers)``: a ``[W]`` bool mask of the workers up at that step.

Several models act together through :func:`combine` (masks AND-ed); the transforms also take a
tuple of models. Which links exist is the topology's business: a mask entry for a pair that
never communicates is simply unused (:meth:`jdo.topology.Topology.effective_matrix`).

**Directed or undirected.** On an undirected topology (every ``W(t)`` has a symmetric support)
a link drop loses an *edge*, both directions together, so ``delivered`` is symmetric; on a
directed one each directed link is lost independently. The model does not know the topology:
``delivered`` takes ``directed`` (False by default, the all-reduce's complete graph), and
:func:`jdo.transforms.gossip` passes :func:`is_directed` of its topology, so
``delivered(t, W, directed=is_directed(topology))`` is exactly what its t-th update uses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo.system.stragglers import draw_key

_TWO_32 = 2**32


def is_directed(topology) -> bool:
    """Whether some mixing matrix of ``topology`` has a non-symmetric support (a link j → i
    without i → j): then :func:`link_drop` drops each directed link on its own."""
    return any(not np.array_equal(m > 0, (m > 0).T) for m in topology.matrices)


def _host(fn, *args):
    """``fn(*args)`` (traced JAX) run on the CPU, as numpy."""
    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(fn(*args))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _delivered_jit(model, step, num_workers, directed):
    return model.delivered_traced(step, num_workers, directed)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _alive_jit(model, step, num_workers):
    return model.alive_traced(step, num_workers)


class NetworkFault:
    """Shared host-side views; subclasses define ``delivered_traced`` and ``alive_traced``."""

    def delivered(self, step: int, num_workers: int, directed: bool = False) -> np.ndarray:
        """The ``[W, W]`` delivered-links mask at ``step`` (entry ``[i, j]``: the message from j
        to i arrives), exactly what the jitted step uses (see the module docstring for
        ``directed``)."""
        num_workers = checks.positive_int("num_workers", num_workers)
        self.check(num_workers)
        return _host(_delivered_jit, self, checks.integer("step", step), num_workers, directed)

    def alive(self, step: int, num_workers: int) -> np.ndarray:
        """The ``[W]`` mask of the workers up at ``step``."""
        num_workers = checks.positive_int("num_workers", num_workers)
        self.check(num_workers)
        return _host(_alive_jit, self, checks.integer("step", step), num_workers)

    def check(self, num_workers: int) -> None:
        """Raises if the model does not fit ``num_workers`` workers (a listed worker beyond)."""

    @property
    def crashes(self) -> bool:
        """Whether a worker can ever be down (the transforms then mask updates)."""
        return False

    @property
    def rejoins(self) -> bool:
        """Whether a down worker can come back (it then resynchronises on rejoin)."""
        return False


def _eye(n: int) -> jax.Array:
    return jnp.eye(n, dtype=bool)


@dataclasses.dataclass(frozen=True)
class LinkDrop(NetworkFault):
    """Each link (edge) lost with probability ``p`` per step (see :func:`link_drop`)."""

    p: float
    seed: int = 0

    def delivered_traced(self, step, num_workers: int, directed: bool = False) -> jax.Array:
        n = num_workers
        threshold = round(self.p * _TWO_32)  # lost when the 32 random bits fall below it
        if threshold >= _TWO_32:
            return _eye(n)
        key, step = jax.random.key(self.seed), jnp.asarray(step, jnp.int32)
        draw = lambda i: jax.random.bits(draw_key(key, i, step), (n,), jnp.uint32)
        kept = jax.vmap(draw)(jnp.arange(n)) >= jnp.uint32(threshold)  # row i: receiver i
        if not directed:  # edge {i < j} decided by row i's draw j, for both directions
            upper = jnp.triu(kept, 1)
            kept = upper | upper.T
        return kept | _eye(n)

    def alive_traced(self, step, num_workers: int) -> jax.Array:
        del step
        return jnp.ones((num_workers,), bool)


@dataclasses.dataclass(frozen=True)
class NodeCrash(NetworkFault):
    """Listed workers down for ``at_step <= step < rejoin_step`` (see :func:`node_crash`)."""

    workers: tuple[int, ...]
    at_step: int
    rejoin_step: int | None = None

    def check(self, num_workers: int) -> None:
        if max(self.workers) >= num_workers:
            raise checks.InvalidArgument(
                "workers",
                f"lists worker {max(self.workers)} but there are {num_workers} workers "
                f"(indices 0..{num_workers - 1})",
            )

    @property
    def crashes(self) -> bool:
        return True

    @property
    def rejoins(self) -> bool:
        return self.rejoin_step is not None

    def alive_traced(self, step, num_workers: int) -> jax.Array:
        self.check(num_workers)
        step = jnp.asarray(step, jnp.int32)
        down = step >= self.at_step
        if self.rejoin_step is not None:
            down = down & (step < self.rejoin_step)
        listed = np.isin(np.arange(num_workers), self.workers)
        return ~(jnp.asarray(listed) & down)

    def delivered_traced(self, step, num_workers: int, directed: bool = False) -> jax.Array:
        del directed
        up = self.alive_traced(step, num_workers)
        return (up[:, None] & up[None, :]) | _eye(num_workers)


@dataclasses.dataclass(frozen=True)
class Combined(NetworkFault):
    """Several network faults at once: a link delivers and a worker is up only if every model
    says so (see :func:`combine`)."""

    models: tuple[NetworkFault, ...]

    def check(self, num_workers: int) -> None:
        for m in self.models:
            m.check(num_workers)

    @property
    def crashes(self) -> bool:
        return any(m.crashes for m in self.models)

    @property
    def rejoins(self) -> bool:
        return any(m.rejoins for m in self.models)

    def delivered_traced(self, step, num_workers: int, directed: bool = False) -> jax.Array:
        masks = [m.delivered_traced(step, num_workers, directed) for m in self.models]
        return functools.reduce(jnp.logical_and, masks)

    def alive_traced(self, step, num_workers: int) -> jax.Array:
        masks = [m.alive_traced(step, num_workers) for m in self.models]
        return functools.reduce(jnp.logical_and, masks)


def link_drop(p: float, seed: int = 0) -> LinkDrop:
    r"""Unreliable links: at every step each link is lost with probability ``p``, independently
    over links and steps (Yu et al. 2019, "Distributed Learning over Unreliable Networks",
    ICML: each message dropped with probability p).

    On an undirected topology an edge is lost in both directions at once (``delivered`` is
    symmetric); on a directed one each directed link on its own (module docstring). The draw
    of step t for receiver i is ``bits = random.bits(fold_in(fold_in(key(seed), i), t), [W])``
    (uint32), and the message from j is lost when ``bits[j] < round(p · 2^32)``; an undirected
    edge ``{i < j}`` uses row i's draw. Gossip then mixes with
    :meth:`~jdo.topology.Topology.effective_matrix` (a lost message's weight goes to the
    receiver's own value); all-reduce averages what arrived.

    Args:
      p: probability that a link is lost at a step, in ``[0, 1]`` (1: nothing ever arrives).
      seed: the draws' seed.
    """
    return LinkDrop(checks.probability("p", p), checks.integer("seed", seed))


def node_crash(workers: Sequence[int], at_step: int, rejoin_step: int | None = None) -> NodeCrash:
    r"""Crashed workers: every listed worker is down for ``at_step <= step < rejoin_step``
    (for good when ``rejoin_step`` is None).

    A down worker neither sends nor updates: its parameters stay as they were, and nobody reads
    its messages (they count as lost, as in ``delivered``). On rejoin it takes the current
    average (all-reduce: the mean of the workers that stayed up, as torchft's per-step quorum
    does when a replica comes back) or its neighbours' average (gossip), then continues.

    Args:
      workers: worker indices (``>= 0``), e.g. ``[3, 5]``.
      at_step: the first step (the transform's update count) they are down, ``>= 0``.
      rejoin_step: the first step they are up again (``> at_step``), or None.
    """
    workers = checks.int_sequence("workers", workers, minimum=0, allow_empty=False)
    at_step = checks.integer("at_step", at_step, minimum=0)
    if rejoin_step is not None:
        rejoin_step = checks.integer("rejoin_step", rejoin_step, minimum=at_step + 1)
    return NodeCrash(tuple(sorted(set(workers))), at_step, rejoin_step)


def combine(*models: NetworkFault) -> NetworkFault:
    """Several network faults at once (``combine(link_drop(0.1), node_crash([3], 100))``): a
    link delivers when every model delivers it, a worker is up when every model has it up."""
    if not models:
        raise checks.InvalidArgument("models", "must hold at least one fault model")
    for m in models:
        if not isinstance(m, NetworkFault):
            raise checks.WrongType(
                "models",
                f"must be network faults (link_drop, node_crash), got {type(m).__name__}",
            )
    return models[0] if len(models) == 1 else Combined(tuple(models))


def network_faults(name: str, value) -> NetworkFault | None:
    """A transform's ``faults`` argument as one :class:`NetworkFault` (None stays None; a list
    or tuple is :func:`combine`-d)."""
    if value is None or isinstance(value, NetworkFault):
        return value
    if isinstance(value, list | tuple):
        return combine(*value)
    raise checks.WrongType(
        name,
        f"must be None, a network fault (jdo.faults.link_drop(p), jdo.faults.node_crash(...)) "
        f"or a list of them, got {type(value).__name__}",
    )


def rejoining(model: NetworkFault, step, num_workers: int, since: int = 1) -> jax.Array:
    """``[W]`` traced: up at ``step`` but down at some step in ``[step − since, step)`` (a
    step before 0 counts as up): the workers that must resynchronise now."""
    was_down = jnp.zeros((num_workers,), bool)
    for back in range(1, since + 1):
        before = jnp.asarray(step, jnp.int32) - back
        up = model.alive_traced(before, num_workers) | (before < 0)
        was_down = was_down | ~up
    return model.alive_traced(step, num_workers) & was_down
