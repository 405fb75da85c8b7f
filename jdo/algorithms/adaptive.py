"""Adaptive communication (issue 18): AdaComm's period, Accordion's compressor switch and
MATCHA's matchings, each one transform chain (:mod:`jdo.transforms.adaptive`) whose step
metrics report what it chose (``adaptive/H``, ``adaptive/level``, ``adaptive/matchings``)
and the traffic of the branch taken (``traffic``: the runner's exact ``bytes/total``)."""

from __future__ import annotations

import optax

from jdo import checks, transforms
from jdo._axis import WORKERS
from jdo.algorithms.allreduce_sgd import from_transform
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.compress import Compressor
from jdo.topology import Topology


@register("adacomm")
def adacomm(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    every: int = 16,
    min_every: int = 1,
    max_every: int | None = None,
    interval: int | None = None,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Local SGD whose averaging period follows the training loss (AdaComm; Wang & Joshi
    2019): the worker's mini-batch loss goes to the transform each step. See
    :func:`jdo.transforms.adacomm`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.adacomm(
        every, min_every=min_every, max_every=max_every, interval=interval, axis_name=axis_name
    )
    chain = optax.chain(optimizer, tx)
    return from_transform(loss_fn, chain, with_loss=True, report=transforms.adaptive_metrics)


@register("accordion")
def accordion(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    low: Compressor,
    high: Compressor,
    *,
    error_feedback: str | None = "ef",
    interval: int = 50,
    eta: float = 0.5,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Compressed all-reduce SGD switching between ``low`` and ``high`` compression by
    Accordion's gradient-norm criterion (Agarwal et al. 2021). See
    :func:`jdo.transforms.accordion`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.accordion(
        low,
        high,
        error_feedback=error_feedback,
        interval=interval,
        eta=eta,
        seed=seed,
        axis_name=axis_name,
    )
    return from_transform(loss_fn, optax.chain(tx, optimizer), report=transforms.adaptive_metrics)


@register("matcha")
def matcha(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    *,
    budget: float = 0.5,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Decentralized SGD gossiping over a random subset of the topology's matchings under a
    communication budget (MATCHA; Wang et al. 2019). See :func:`jdo.transforms.matcha`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.matcha(topology, budget, seed, axis_name=axis_name)
    return from_transform(loss_fn, optax.chain(optimizer, tx), report=transforms.adaptive_metrics)
