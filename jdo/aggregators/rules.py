r"""Robust aggregation rules: a stacked ``xs: [W, ...]`` pytree (one input per worker) in, one
input-shaped aggregate out (the leading axis removed).

Each rule is pure and jittable; its arguments other than ``x`` are static Python values checked
when the rule is traced (``W`` is the static leading size). Norms and distances are over the whole
flattened pytree, never per leaf. ``f`` is the number of Byzantine inputs the rule is asked to
tolerate; each docstring says what the rule needs of ``W`` and ``f`` and which guarantee its
analysis assumes (an honest majority, bounded heterogeneity of the honest inputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdo import checks
from jdo.aggregators.stacked import (
    combine,
    num_inputs,
    pairwise_sq_distances,
    select,
    sq_distances_to,
    sq_norms,
)

CONDITIONS = {  # the least W each condition allows for f Byzantine inputs
    "2f < W": lambda f: 2 * f + 1,
    "W > 2f + 2": lambda f: 2 * f + 3,
}


def byzantine_count(f, w: int, rule: str, condition: str) -> int:
    """``f`` as a checked int: non-negative and with ``W`` inputs satisfying ``condition``, one
    of :data:`CONDITIONS` (``"2f < W"``, ``"W > 2f + 2"``); raises
    :class:`jdo.checks.InvalidArgument` naming ``f``."""
    f = checks.non_negative_int("f", f)
    if w < CONDITIONS[condition](f):
        raise checks.InvalidArgument(
            "f", f"must satisfy {condition} for {rule} with W = {w} inputs, got f = {f}"
        )
    return f


def mean(x):
    r"""The plain mean :math:`\frac1W \sum_i x_i` (the non-robust baseline).

    Needs nothing and guarantees nothing: one Byzantine input moves it arbitrarily far.
    """
    num_inputs(x)
    return jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), x)


def coordinate_median(x):
    r"""The coordinate-wise median: per coordinate, numpy's median of the W values (the middle
    value for odd W, the mean of the two middle values for even W).

    Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates". Needs an honest majority (f < W/2, which it does not take as an argument); its
    error bound assumes bounded heterogeneity of the honest inputs and grows with the dimension.
    A NaN sorts above ``+inf`` (where ``np.median`` would return NaN), so a minority of NaN
    inputs is outvoted like any large value.
    """
    w = num_inputs(x)

    def median(leaf):
        s = jnp.sort(leaf, axis=0)
        if w % 2:
            return s[w // 2]
        return (s[w // 2 - 1] + s[w // 2]) / 2  # numpy: np.mean of the two middle values

    return jax.tree.map(median, x)


def trimmed_mean(x, f):
    r"""The coordinate-wise trimmed mean: per coordinate, drop the f largest and the f smallest
    of the W values and average the remaining W − 2f.

    Yin et al. 2018. Needs 2f < W (an honest majority); its error bound assumes bounded
    heterogeneity of the honest inputs. Equals ``scipy.stats.trim_mean(x, f / W, axis=0)``
    whenever ``int(f / W * W) == f`` (scipy cuts ``int(proportion * W)`` from each end). A NaN
    sorts above ``+inf``: up to f NaN inputs are trimmed away.
    """
    w = num_inputs(x)
    f = byzantine_count(f, w, "trimmed_mean", "2f < W")
    return jax.tree.map(lambda leaf: jnp.mean(jnp.sort(leaf, axis=0)[f : w - f], axis=0), x)


def krum_scores(x, f) -> jax.Array:
    r"""``[W]``: Krum's score of each input, the sum of its squared distances to its
    W − f − 2 nearest other inputs, :math:`s_i = \sum_{j \in N_i} \|x_i - x_j\|^2` (a NaN
    distance counts as the largest; a NaN score as ``inf``)."""
    w = num_inputs(x)
    f = byzantine_count(f, w, "krum", "W > 2f + 2")
    d = pairwise_sq_distances(x) + jnp.diag(jnp.full((w,), jnp.inf))  # never one's own
    scores = jnp.sum(jnp.sort(d, axis=1)[:, : w - f - 2], axis=1)  # sort puts NaN last
    return jnp.where(jnp.isnan(scores), jnp.inf, scores)  # a NaN input is never the best


def krum(x, f):
    r"""Krum: the input with the least score :math:`s_i` (:func:`krum_scores`), the sum of
    squared distances to its W − f − 2 nearest other inputs; ties go to the lowest index.

    Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent". Needs W > 2f + 2; its guarantee assumes an honest majority and honest inputs of
    bounded variance around one gradient (i.i.d. data: bounded heterogeneity).
    """
    return select(x, jnp.argmin(krum_scores(x, f)))


def multi_krum(x, f, m):
    r"""Multi-Krum: the mean of the m inputs with the lowest Krum scores (:func:`krum_scores`),
    ties to the lower index. ``m = 1`` is Krum; ``m = W`` is the mean.

    Blanchard et al. 2017; El Mhamdi et al. 2018 ("The Hidden Vulnerability of Distributed
    Learning in Byzantium") use ``m = W − f``. Needs W > 2f + 2 and 1 <= m <= W; same
    assumptions as Krum.
    """
    w = num_inputs(x)
    m = checks.positive_int("m", m)
    if m > w:
        raise checks.InvalidArgument("m", f"must be at most W = {w} for multi_krum, got {m}")
    chosen = jnp.argsort(krum_scores(x, f), stable=True)[:m]
    return jax.tree.map(lambda leaf: jnp.mean(leaf[chosen], axis=0), x)


def geometric_median(x, iters=100, eps=1e-8):
    r"""The geometric median :math:`\arg\min_z \sum_i \|x_i - z\|` by smoothed Weiszfeld:
    from the coordinate-wise mean :math:`z_0`, ``iters`` times

    .. math:: z_{t+1} = \frac{\sum_i \beta_i x_i}{\sum_i \beta_i}, \qquad
              \beta_i = \frac{1}{\max(\epsilon, \|x_i - z_t\|)}.

    Pillutla et al. 2019, "Robust Aggregation for Federated Learning" (RFA). Breakdown point
    1/2: needs an honest majority (f < W/2); its error bound assumes bounded heterogeneity.
    """
    num_inputs(x)
    iters = checks.non_negative_int("iters", iters)
    eps = checks.positive("eps", eps)

    def step(_, z):
        beta = 1.0 / jnp.maximum(eps, jnp.sqrt(sq_distances_to(x, z)))
        return combine(beta / jnp.sum(beta), x)

    return jax.lax.fori_loop(0, iters, step, mean(x))


def centered_clipping(x, tau, iters=1, center=None):
    r"""Centered clipping: from :math:`v_0` = ``center`` (None: the zero vector), ``iters``
    times

    .. math:: v_{l+1} = v_l + \frac1W \sum_i \mathrm{clip}_\tau(x_i - v_l), \qquad
              \mathrm{clip}_\tau(z) = z \cdot \min(1, \tau / \|z\|).

    Karimireddy et al. 2021, "Learning from History for Byzantine Robust Optimization" (with
    worker momentum and the previous aggregate as the center, which
    :func:`jdo.transforms.robust_all_reduce` passes). Needs an honest majority (its analysis:
    a Byzantine fraction below a constant, about 0.1) and bounded heterogeneity (bounded
    variance of the honest inputs around the center); ``tau`` trades bias against robustness.
    """
    w = num_inputs(x)
    tau = checks.positive("tau", tau)
    iters = checks.positive_int("iters", iters)
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype), x)
    if center is None:
        center = zeros
    elif jax.tree.structure(center) != jax.tree.structure(x) or any(
        jnp.shape(c) != jnp.shape(z)
        for c, z in zip(jax.tree.leaves(center), jax.tree.leaves(zeros), strict=False)
    ):
        raise checks.InvalidArgument("center", "must have one input's structure and shapes")

    def step(_, v):
        diffs = jax.tree.map(lambda leaf, c: leaf - c[None], x, v)
        norms = jnp.sqrt(sq_norms(diffs))
        scale = jnp.minimum(1.0, tau / norms)  # a zero difference: tau / 0 = inf, scale 1
        return jax.tree.map(jnp.add, v, combine(scale / w, diffs))

    return jax.lax.fori_loop(0, iters, step, jax.tree.map(jnp.asarray, center))
