"""Algorithms that are one optax transform chain around the local gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.transforms import all_reduce


class TrainState(NamedTuple):
    """One worker's state: its params, the transform chain's state, the step."""

    params: Any
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar


AllReduceSGDState = TrainState  # the name allreduce_sgd's state had first


def from_transform(loss_fn: LossFn, tx: optax.GradientTransformation) -> Algorithm:
    """The algorithm ``x ← x + tx(∇f(x; ξ), x)`` for one worker, where ``tx`` may communicate
    (all-reduce, gossip, compressed exchange, periodic averaging, ...)."""
    checks.function("loss_fn", loss_fn)
    checks.optimizer("tx", tx)

    def init(params, key):
        del key
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), {"loss": loss, **metrics}

    return Algorithm(init, step)


@register("allreduce_sgd")
def allreduce_sgd(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, *, axis_name: str = WORKERS
) -> Algorithm:
    r"""Synchronous data-parallel training: all-reduce the gradients, then any optax optimizer.

    Each worker i draws its own batch :math:`\xi_i`, and every worker applies the same update

    .. math:: g = \frac{1}{W}\sum_{i=1}^{W} \nabla f(x; \xi_i), \qquad
              (u, s) \leftarrow \mathrm{opt}(g, s), \qquad x \leftarrow x + u,

    which is the inner optimizer on the union of the W batches (Dean et al. 2012, "Large Scale
    Distributed Deep Networks"; Goyal et al. 2017, "Accurate, Large Minibatch SGD"). Workers
    start from the same params and stay identical.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` for one worker's batch.
      optimizer: any optax transformation (``optax.sgd(0.1)``, ``optax.adamw(1e-3)``, ...).
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` whose state is :class:`TrainState`.
    """
    checks.optimizer("optimizer", optimizer)
    return from_transform(loss_fn, optax.chain(all_reduce(axis_name), optimizer))
