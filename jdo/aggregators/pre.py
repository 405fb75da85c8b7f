r"""Pre-aggregations: a stacked ``xs: [W, ...]`` pytree in, a stacked pytree out (the leading
axis kept), to be followed by a robust rule (:func:`jdo.aggregators.compose`). Both make rules
that assume near-identical honest inputs robust to heterogeneous (non-i.i.d.) ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo.aggregators.rules import byzantine_count
from jdo.aggregators.stacked import combine, num_inputs, pairwise_sq_distances


def nearest_neighbor_mixing(x, f):
    r"""Nearest-neighbour mixing (NNM): each input replaced by the mean of its W − f nearest
    inputs (itself included; distances over the whole flattened pytree, ties to the lower
    index), :math:`y_i = \frac{1}{W-f} \sum_{j \in N_i} x_j`.

    Allouah et al. 2023, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity". Needs 2f < W (an honest majority); followed by a rule that is robust under
    an honest majority (Krum, the coordinate-wise median or trimmed mean, the geometric median,
    centered clipping) it gives that rule the optimal error under bounded heterogeneity.
    Returns ``[W, ...]``.
    """
    w = num_inputs(x)
    f = byzantine_count(f, w, "nearest_neighbor_mixing", "2f < W")
    nearest = jnp.argsort(pairwise_sq_distances(x), axis=1, stable=True)[:, : w - f]
    mixing = jnp.zeros((w, w)).at[jnp.arange(w)[:, None], nearest].set(1.0 / (w - f))
    return combine(mixing, x)


def bucketing(x, s, key):
    r"""Bucketing: the inputs in a random order (``jax.random.permutation(key, W)``), cut into
    consecutive buckets of ``s`` (the last one smaller when ``s`` does not divide ``W``), each
    bucket replaced by its mean. Returns ``[ceil(W / s), ...]``.

    Karimireddy et al. 2022, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing". Averaging s inputs cuts the honest inputs' heterogeneity by about s, but up to
    s·f buckets may hold a Byzantine input, so the rule that follows must tolerate s·f bad
    buckets of ceil(W / s) (the paper needs f·s below the rule's breakdown fraction of W).
    Every worker must pass the same ``key`` to draw the same buckets.
    """
    w = num_inputs(x)
    s = checks.positive_int("s", s)
    if s > w:
        raise checks.InvalidArgument("s", f"must be at most W = {w} for bucketing, got {s}")
    position_bucket = np.arange(w) // s  # the k-th input of the permutation goes to bucket k // s
    sizes = np.bincount(position_bucket)
    perm = jax.random.permutation(key, w)
    weights = jnp.zeros((len(sizes), w)).at[position_bucket, perm].set(1.0 / sizes[position_bucket])
    return combine(weights, x)
