"""The per-worker algorithm contract and a registry of algorithm factories by name."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any
Metrics = dict[str, jax.Array]
# loss_fn(params, batch, key) -> (scalar loss, dict of scalar metrics), for ONE worker.
LossFn = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, Metrics]]


class Algorithm(NamedTuple):
    """A distributed algorithm as two pure per-worker functions.

    Attributes:
      init: ``init(params, key) -> state``: one worker's state from its initial params.
      step: ``step(state, batch, key) -> (state, metrics)``: one step for one worker; talks to
        the others only through collectives on the factory's ``axis_name``.
      params: ``params(state) -> params``: the model parameters held in ONE worker's state
        (what is evaluated, averaged and compared across workers); ``jax.vmap`` it for the
        stacked state.
      cohort: for sampled participation (FedAvg), how a runner may compute only the sampled
        workers (:class:`Cohort`); None: every worker computes every step. ``step`` alone
        stays correct (non-participants compute and are masked out).
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, Metrics]]
    params: Callable[[PyTree], PyTree] = operator.attrgetter("params")
    cohort: Cohort | None = None


class Cohort(NamedTuple):
    """Sampled participation computed only for the sampled workers (issue 16).

    A round is ``period`` steps; its sampled workers (``members(t, W)``: the sorted ``[S]``
    indices for the round of step ``t``; ``S = size(W)``, static) run ``step``, the
    per-worker step with every worker of the cohort participating (its collectives span the
    S members only), on their gathered ``[S, ...]`` state and data; the other workers do not
    compute. After a round's last step each non-member takes the new global model and server
    state from a member: ``adopt(member_state, own_state) -> own_state``.
    """

    size: Callable[[int], int]
    period: int
    members: Callable[[jax.Array, int], jax.Array]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, Metrics]]
    adopt: Callable[[PyTree, PyTree], PyTree]


_REGISTRY: dict[str, Callable[..., Algorithm]] = {}


def register(name: str) -> Callable[[Callable[..., Algorithm]], Callable[..., Algorithm]]:
    """Decorator registering an algorithm factory under ``name``."""

    def decorator(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"algorithm {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get(name: str) -> Callable[..., Algorithm]:
    """The factory registered under ``name``; a ``KeyError`` lists the known names."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(available())}")
    return _REGISTRY[name]


def available() -> list[str]:
    """Sorted names of the registered algorithms."""
    return sorted(_REGISTRY)
