"""Local SGD: workers step on their own and average their parameters now and then."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import levels
from jdo.comm.collectives import mean, varying
from jdo.comm.control import cond, switch
from jdo.comm.gossip import group_mean
from jdo.comm.hierarchical import hierarchical_mean


class LocalSGDState(NamedTuple):
    count: jax.Array  # int32: updates seen so far


def _averaging(
    every: int, group_size: int | None, group_every: int | None, start: int, axis_name: str
) -> optax.GradientTransformation:
    def init_fn(params):
        del params
        return LocalSGDState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by local SGD: call update(updates, state, params)"
            )
        local = optax.apply_updates(params, updates)
        done = state.count + 1  # local steps taken, this one included
        average = lambda x: varying(mean(x, axis_name), axis_name)
        keep = lambda x: x
        if group_size is None:
            sync = (done % every == 0) | (state.count < start)
            new = cond(sync, average, keep, local)
        else:
            branch = jnp.where(done % every == 0, 2, jnp.where(done % group_every == 0, 1, 0))
            in_group = lambda x: group_mean(x, group_size, axis_name)
            if levels(axis_name) is not None:  # a two-level mesh: the hierarchical all-reduce
                average = lambda x: hierarchical_mean(x, axis_name)
            new = switch(branch, [keep, in_group, average], local)
        updates = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
        return updates, LocalSGDState(state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def local_sgd(every: int, *, start: int = 0, axis_name: str = WORKERS):
    r"""Parameter averaging every ``every`` local steps (local SGD; Stich 2019, "Local SGD
    Converges Fast and Communicates Little"), placed last in a chain after the local optimizer:

    .. math:: x_i \leftarrow x_i + u_i; \quad \text{after steps } H, 2H, \dots:\;
              x_i \leftarrow \tfrac1W \textstyle\sum_j x_j.

    ``start=T`` gives post-local SGD (Lin et al. 2020, "Don't Use Large Mini-Batches, Use Local
    SGD"): average after every step for the first T steps, then every H. With ``every=1`` and
    SGD this is all-reduce SGD. Works inside ``shard_map`` (``lax.cond`` on the step count;
    unlike ``optax.MultiSteps``, jax issue 23693).
    """
    checks.positive_int("every", every)
    checks.non_negative_int("start", start)
    return _averaging(every, None, None, start, axis_name)


def hierarchical_local_sgd(
    group_size: int, group_every: int, every: int, *, axis_name: str = WORKERS
) -> optax.GradientTransformation:
    r"""Two-level local SGD (as in PyTorch's hierarchical model averaging; Lin et al. 2020,
    "Don't Use Large Mini-Batches, Use Local SGD", hierarchical local SGD): workers average
    within groups of ``group_size`` consecutive workers every ``group_every`` steps (e.g. GPUs
    of one node), and all together every ``every`` steps (``every`` a multiple of
    ``group_every``):

    .. math:: x_i \leftarrow x_i + u_i; \quad \text{after steps } H_g, 2H_g, \dots:\;
              x_i \leftarrow \tfrac1g \textstyle\sum_{j \in G(i)} x_j; \quad
              \text{after } H, 2H, \dots:\; x_i \leftarrow \tfrac1W \textstyle\sum_j x_j.

    On the shard_map lifting's two-level ``(nodes, local)`` mesh with nodes of
    ``group_size`` (``lifting.nodes=W/group_size``) the group mean is one all-reduce inside
    the node and the global one the hierarchical all-reduce
    (:func:`jdo.comm.hierarchical_mean`); elsewhere the group mean is ``g − 1`` ppermutes.
    """
    checks.positive_int("group_size", group_size)
    checks.positive_int("group_every", group_every)
    checks.positive_int("every", every)
    if every % group_every:
        raise checks.InvalidArgument(
            "every", f"must be a multiple of group_every ({group_every}), got {every}"
        )
    return _averaging(every, group_size, group_every, 0, axis_name)
