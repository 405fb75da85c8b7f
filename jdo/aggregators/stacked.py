"""Helpers on stacked ``xs: [W, ...]`` pytrees (one input per leading index) that every rule
shares: the number of inputs, norms and distances over the whole flattened pytree, and
weighted combinations of the inputs.

Distances are computed as sums of squared differences (never through the Gram matrix
``|a|² + |b|² − 2a·b``, which cancels catastrophically when an outlier is large), one input
against all the others at a time, so the memory is ``W`` inputs, not ``W²``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdo import checks


def num_inputs(xs) -> int:
    """The number of stacked inputs ``W`` (the shared leading size of every leaf); raises
    :class:`jdo.checks.InvalidArgument` on an empty pytree, a scalar leaf or leaves that
    disagree."""
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise checks.InvalidArgument("x", "must hold at least one array, got an empty pytree")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise checks.InvalidArgument("x", "must be stacked [W, ...]: a leaf is a scalar")
    if len(sizes) != 1:
        raise checks.InvalidArgument(
            "x", f"must be stacked [W, ...] with one W for every leaf, got {sorted(sizes)}"
        )
    (w,) = sizes
    if w < 1:
        raise checks.InvalidArgument("x", "must hold at least one input (W >= 1), got W = 0")
    return int(w)


def sq_norms(xs) -> jax.Array:
    """``[W]``: ``‖x_i‖²`` over the whole flattened pytree of each stacked input (at least
    float32)."""
    per_leaf = [  # accumulated in at least float32 (bfloat16 updates: no bfloat16 sums)
        jnp.sum(jnp.square(leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))), axis=1)
        for leaf in (leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(xs))
    ]
    return sum(per_leaf[1:], per_leaf[0])


def sq_distances_to(xs, z) -> jax.Array:
    """``[W]``: ``‖x_i − z‖²`` over the whole flattened pytree (``z`` has no leading axis)."""
    return sq_norms(jax.tree.map(lambda leaf, c: leaf - c[None], xs, z))


def pairwise_sq_distances(xs) -> jax.Array:
    """``[W, W]``: ``‖x_i − x_j‖²`` over the whole flattened pytree (exactly symmetric, zero
    diagonal)."""
    return jax.lax.map(lambda row: sq_distances_to(xs, row), xs)


def combine(weights: jax.Array, xs):
    """``Σ_i weights[..., i] · x_i`` per leaf: ``weights`` ``[W]`` gives one input-shaped
    result, ``[K, W]`` gives ``K`` stacked results (full float precision on every backend,
    never TF32)."""
    highest = jax.lax.Precision.HIGHEST
    return jax.tree.map(
        lambda leaf: jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1, precision=highest),
        xs,
    )


def select(xs, index):
    """The input ``x_index`` (leading axis removed)."""
    return jax.tree.map(lambda leaf: leaf[index], xs)
