"""Proximal operators of the regularisers a consensus variable z may carry.

``prox(v, t) = argmin_z r(z) + (1/(2t)) ||z − v||²`` for one array ``v`` and step ``t > 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jdo import checks


def none():
    """No regulariser: the identity."""
    return lambda v, t: v


def l1(strength: float):
    """``r(z) = strength · ||z||_1``: soft thresholding."""
    checks.non_negative("strength", strength)
    return lambda v, t: jnp.sign(v) * jnp.maximum(jnp.abs(v) - strength * t, 0.0)


def l2(strength: float):
    """``r(z) = (strength/2) ||z||²``: shrinkage."""
    checks.non_negative("strength", strength)
    return lambda v, t: v / (1.0 + strength * t)


def box(lower: float, upper: float):
    """The indicator of ``lower <= z <= upper``: clipping (``optax.projections``)."""
    checks.number("lower", lower)
    checks.number("upper", upper, low=lower)
    return lambda v, t: optax.projections.projection_box(v, lower, upper)


def simplex(scale: float = 1.0):
    """The indicator of ``{z >= 0, Σ z = scale}`` (``optax.projections``)."""
    checks.positive("scale", scale)
    return lambda v, t: optax.projections.projection_simplex(v.reshape(-1), scale).reshape(v.shape)


def tree(prox, v_tree, t):
    """Applies an array prox leaf by leaf."""
    return jax.tree.map(lambda v: prox(v, t), v_tree)
