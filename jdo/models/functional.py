"""The functional boundary between an NNX model and pure per-worker code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def functional(model: nnx.Module) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
    """Splits ``model`` into ``apply(params, x)`` and its params as a plain nested dict.

    ``params`` is an ordinary pytree of arrays (what optax, collectives and orbax see);
    ``apply`` merges it back into the module only while tracing, so no NNX object crosses a
    ``jit``/``vmap``/``shard_map`` boundary.
    """
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)

    def apply(params, x):
        local = jax.tree.map(lambda v: v, state)  # a fresh State to fill, never mutated in place
        nnx.replace_by_pure_dict(local, params)
        return nnx.merge(graphdef, local)(x)

    return apply, params
