"""Ready-made constraint functions ``fn(params, batch) -> array`` (``<= 0`` is feasible)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdo import checks


def norm_bound(radius: float):
    """``||θ||² − radius² <= 0``: a norm-bounded model (all parameters together)."""
    checks.positive("radius", radius)

    def fn(params, batch=None):
        del batch
        return sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params)) - radius**2

    return fn
