"""All-reduce of updates across workers as an optax transform."""

from __future__ import annotations

from typing import Literal

import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm import collectives


def all_reduce(
    axis_name: str = WORKERS, *, op: Literal["mean", "sum"] = "mean"
) -> optax.GradientTransformation:
    r"""Averages (or sums) the incoming updates over the workers on ``axis_name``.

    Every worker ``i`` holding update :math:`g_i` gets

    .. math:: g_i \leftarrow \frac{1}{W} \sum_{j=1}^{W} g_j \quad (\text{op="mean"}), \qquad
              g_i \leftarrow \sum_{j=1}^{W} g_j \quad (\text{op="sum"}).

    Placed first in a chain it gives synchronous data-parallel SGD (mini-batch SGD over the
    union of the workers' batches; Dean et al. 2012, Goyal et al. 2017):
    ``optax.chain(jdo.transforms.all_reduce(), optax.adam(1e-3))``. It must run under a lifting
    that binds ``axis_name``: ``jax.vmap(..., axis_name=)``, ``jax.shard_map`` over that mesh
    axis, or ``jax.pmap(..., axis_name=)``. It holds no state.

    Args:
      axis_name: the named axis the workers live on.
      op: ``"mean"`` (default) or ``"sum"``.

    Returns:
      An ``optax.GradientTransformation``.
    """
    checks.one_of("op", op, ("mean", "sum"))
    reduce = collectives.mean if op == "mean" else collectives.sum

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return reduce(updates, axis_name), state

    return optax.GradientTransformation(init_fn, update_fn)
