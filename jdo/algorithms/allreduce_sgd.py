"""Algorithms that are one optax transform chain around the local gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import aggregators, checks
from jdo._axis import WORKERS
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.faults import Byzantine, network_faults
from jdo.transforms import all_reduce, robust_all_reduce
from jdo.worker_map import per_worker_compute


class TrainState(NamedTuple):
    """One worker's state: its params, the transform chain's state, the step."""

    params: Any
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar


AllReduceSGDState = TrainState  # the name allreduce_sgd's state had first


def from_transform(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    with_loss: bool = False,
    report: Callable[[Any], dict] | None = None,
) -> Algorithm:
    """The algorithm ``x ← x + tx(∇f(x; ξ), x)`` for one worker, where ``tx`` may communicate
    (all-reduce, gossip, compressed exchange, periodic averaging, ...). ``with_loss``: ``tx``
    also receives the worker's loss, ``tx.update(g, s, x, loss=f(x; ξ))`` (AdaComm);
    ``report(opt_state)``: step metrics read off the new transform state."""
    checks.function("loss_fn", loss_fn)
    checks.optimizer("tx", tx)
    extra = lambda loss: {"loss": loss} if with_loss else {}
    reported = report if report is not None else (lambda opt_state: {})

    def init(params, key):
        del key
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        grad_fn = per_worker_compute(jax.value_and_grad(loss_fn, has_aux=True))
        (loss, metrics), grads = grad_fn(state.params, batch, key)  # chunkable: no collectives
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra(loss))
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, **reported(opt_state)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return Algorithm(init, step)


@register("allreduce_sgd")
def allreduce_sgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    faults=None,
    aggregator=None,
    backup_workers: int = 0,
    axis_name: str = WORKERS,
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
      faults: network faults (``jdo.faults.link_drop``, ``node_crash``: each worker averages
        the gradients that reached it; with a crash the average is of the optimizer's updates,
        :func:`jdo.transforms.all_reduce` placed after it, so a rejoining worker lands on the
        survivors' parameters) or Byzantine workers (``jdo.faults.byzantine``: their gradients
        are replaced by the attack before a robust ``aggregator`` combines them).
      aggregator: a robust rule (``jdo.aggregators.aggregator("coordinate_median")``, a
        composition, or a function of the stacked ``[W, ...]`` gradients): the gradients are
        all-gathered and aggregated by it (:func:`jdo.transforms.robust_all_reduce`).
      backup_workers: average the ``W − b`` gradients ready first by simulated time (needs a
        simulated cluster; Chen et al. 2016).
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` whose state is :class:`TrainState`.
    """
    checks.optimizer("optimizer", optimizer)
    return from_transform(
        loss_fn, _aggregation(optimizer, faults, aggregator, backup_workers, axis_name)
    )


def _aggregation(optimizer, faults, aggregator, backup_workers, axis_name):
    """The chain of :func:`allreduce_sgd`: how the gradients are combined, then ``optimizer``."""
    byzantine = isinstance(faults, Byzantine)
    if aggregator is not None or byzantine:
        if backup_workers:
            raise checks.InvalidArgument("backup_workers", "do not combine with an aggregator")
        if faults is not None and not byzantine:
            raise checks.InvalidArgument(
                "faults", "a robust aggregator takes Byzantine workers, not network faults"
            )
        rule = aggregator if aggregator is not None else aggregators.mean
        return optax.chain(robust_all_reduce(rule, axis_name, faults=faults), optimizer)
    if faults is not None:
        network = network_faults("faults", faults)
        if network.crashes:  # average updates: a rejoining worker needs the params
            return optax.chain(optimizer, all_reduce(axis_name, faults=network))
        return optax.chain(all_reduce(axis_name, faults=network), optimizer)
    return optax.chain(all_reduce(axis_name, backup_workers=backup_workers), optimizer)
