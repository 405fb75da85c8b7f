r"""Corrections for stale gradients, as optax transformations that receive the staleness.

Both are ``optax.GradientTransformationExtraArgs``: their ``update`` takes, besides the
gradient of ONE worker, the keyword arguments ``staleness`` (:math:`\tau`, an int scalar: the
updates the server applied since the worker read its parameters) and ``stale_params``
(:math:`w_\tau`, the parameters the gradient was computed on); ``params`` is the server's
current :math:`w_t`. They chain with ``optax.chain`` and ignore extra arguments they do not
use. :func:`jdo.asynchrony.algorithm` applies them to each gradient before averaging.

    pre = optax.chain(jdo.asynchrony.dc_asgd(0.04), jdo.asynchrony.staleness_aware_lr())
    g, pre_state = pre.update(g, pre_state, w_t, staleness=tau, stale_params=w_tau)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks


class CorrectionState(NamedTuple):
    """The corrections are stateless (the constant-λ DC-ASGD and the 1/τ learning rate)."""


def staleness_aware_lr() -> optax.GradientTransformationExtraArgs:
    r"""The staleness-aware learning rate of Zhang, Gupta, Lian & Liu 2016 ("Staleness-aware
    Async-SGD for Distributed Deep Learning", IJCAI): a gradient :math:`\tau` updates old is
    applied with the learning rate divided by :math:`\tau`,

    .. math:: g \leftarrow g / \max(\tau, 1),

    (a fresh gradient, :math:`\tau = 0`, keeps the full rate). Placed before a plain SGD
    optimizer it is exactly :math:`\alpha/\tau`; before an adaptive one (Adam) it scales the
    gradient, not the step.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` taking ``staleness`` (int scalar).
    """

    def init_fn(params):
        del params
        return CorrectionState()

    def update_fn(updates, state, params=None, *, staleness, **extra):
        del params, extra
        scale = 1.0 / jnp.maximum(jnp.asarray(staleness), 1).astype(jnp.float32)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dc_asgd(dc_lambda: float) -> optax.GradientTransformationExtraArgs:
    r"""Delay compensation of Zheng et al. 2017 ("Asynchronous Stochastic Gradient Descent with
    Delay Compensation", ICML; DC-ASGD-c): the gradient computed on the stale :math:`w_\tau` is
    corrected towards the gradient at the current :math:`w_t` by a first-order Taylor term whose
    Hessian is approximated by :math:`\lambda\, g \odot g`,

    .. math:: g \leftarrow g + \lambda\, g \odot g \odot (w_t - w_\tau).

    :math:`\tau = 0` (:math:`w_\tau = w_t`) leaves the gradient unchanged.

    Args:
      dc_lambda: :math:`\lambda \ge 0` (the paper uses 0.04 to 2 for CIFAR-10 and ImageNet).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` taking ``stale_params`` (:math:`w_\tau`);
      ``params`` must be :math:`w_t`.
    """
    dc_lambda = checks.non_negative("dc_lambda", dc_lambda)

    def init_fn(params):
        del params
        return CorrectionState()

    def update_fn(updates, state, params=None, *, stale_params, **extra):
        del extra
        if params is None:
            raise ValueError("dc_asgd needs params (the current w_t)")
        compensated = jax.tree.map(
            lambda g, w, w_tau: g + dc_lambda * g * g * (w - w_tau), updates, params, stale_params
        )
        return compensated, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def corrections(
    dc_lambda: float | None = None, lr_scaling: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """DC-ASGD (when ``dc_lambda`` is set), then the staleness-aware learning rate (when
    ``lr_scaling="inverse"``), chained; the identity when neither is set."""
    checks.one_of("lr_scaling", lr_scaling, (None, "inverse"))
    parts = []
    if dc_lambda is not None:
        parts.append(dc_asgd(dc_lambda))
    if lr_scaling == "inverse":
        parts.append(staleness_aware_lr())
    return optax.chain(*(parts or [optax.identity()]))
