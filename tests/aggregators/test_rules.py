"""The robust rules against independent numpy/scipy references on pytree inputs with outliers,
all under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from jdo import aggregators as A
from jdo import checks
from tests.aggregators import reference as R

X8 = R.inputs(8, outliers=2, seed=0)
X7 = R.inputs(7, outliers=3, seed=1)


def _jit(rule, **static):
    return jax.jit(lambda x: rule(x, **static))


def _close(out, flat_ref, like, rtol=1e-6, atol=1e-6):
    ref = R.unflatten(flat_ref, like)
    for k in like:
        np.testing.assert_allclose(out[k], ref[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("x", [X7, X8], ids=["W7", "W8"])
def test_coordinate_median_is_numpys_median(x):
    out = _jit(A.coordinate_median)(x)
    for k in x:  # odd W: the middle value; even W: the mean of the two middle values
        np.testing.assert_array_equal(out[k], np.median(x[k], axis=0))


@pytest.mark.parametrize(("x", "f"), [(X8, 2), (X8, 3), (X7, 3), (X7, 0)])
def test_trimmed_mean_is_scipy_trim_mean_with_proportion_f_over_w(x, f):
    w = len(x["b"])
    # scipy cuts int(proportiontocut * W) from each end: exactly f here (checked, not assumed).
    assert int(f / w * w) == f
    out = _jit(A.trimmed_mean, f=f)(x)
    for k in x:
        np.testing.assert_allclose(
            out[k],
            scipy.stats.trim_mean(x[k].astype(np.float64), f / w, axis=0),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize(("x", "f"), [(X8, 2), (X8, 1), (X7, 2)])
def test_krum_selects_the_reference_index_and_multi_krum_averages_the_m_best(x, f):
    flat = R.flatten(x)
    np.testing.assert_allclose(
        jax.jit(A.krum_scores, static_argnums=1)(x, f), R.krum_scores(flat, f), rtol=1e-5
    )
    index = R.krum_index(flat, f)
    out = _jit(A.krum, f=f)(x)
    for k in x:
        np.testing.assert_array_equal(out[k], x[k][index])  # the input itself, not a copy of it
    m = len(flat) - f
    _close(_jit(A.multi_krum, f=f, m=m)(x), R.multi_krum(flat, f, m), x)


def test_krum_and_multi_krum_break_ties_to_the_lower_index():
    # 1-D points 2, 0, -2, 1, -1 with f = 0: exact integer scores [14, 6, 14, 6, 6].
    x = {"v": jnp.asarray([[2.0], [0.0], [-2.0], [1.0], [-1.0]])}
    scores, best, two, five = jax.jit(
        lambda x: (A.krum_scores(x, 0), A.krum(x, 0), A.multi_krum(x, 0, 2), A.multi_krum(x, 0, 5))
    )(x)
    np.testing.assert_array_equal(scores, [14, 6, 14, 6, 6])
    assert float(best["v"][0]) == 0.0  # index 1, not 3 or 4
    assert float(two["v"][0]) == 0.5  # indices 1, 3 (not 3, 4: 0.0)
    assert float(five["v"][0]) == 0.0  # m = W: the mean


def test_nan_inputs_count_as_the_farthest_in_the_sort_based_rules():
    x = {k: v.copy() for k, v in X8.items()}
    for v in x.values():
        v[[0, 5]] = np.nan
    far = {k: np.where(np.isnan(v), np.inf, v) for k, v in x.items()}  # what NaN sorts as
    median, trimmed, best = jax.jit(
        lambda x: (A.coordinate_median(x), A.trimmed_mean(x, 2), A.krum(x, 2))
    )(x)
    index = R.krum_index(R.flatten({k: np.where(np.isnan(v), 1e30, v) for k, v in x.items()}), 2)
    assert index not in (0, 5)
    for k in x:
        np.testing.assert_array_equal(median[k], np.median(far[k], axis=0))
        np.testing.assert_allclose(
            trimmed[k], scipy.stats.trim_mean(far[k], 2 / 8, axis=0), rtol=1e-6, atol=1e-6
        )
        np.testing.assert_array_equal(best[k], x[k][index])


def test_geometric_median_minimises_the_sum_of_distances():
    flat = R.flatten(X8)
    objective = lambda z: np.sum(np.linalg.norm(flat - z, axis=1))
    gradient = lambda z: -np.sum((flat - z) / np.linalg.norm(flat - z, axis=1)[:, None], axis=0)
    best = scipy.optimize.minimize(
        objective, flat.mean(axis=0), jac=gradient, method="BFGS", options={"gtol": 1e-10}
    ).x
    out = _jit(A.geometric_median)(X8)  # iters=100, eps=1e-8
    _close(out, best, X8, rtol=0, atol=1e-4)
    ours = R.flatten({k: np.asarray(v)[None] for k, v in out.items()})[0]
    assert objective(ours) <= objective(best) * (1 + 1e-6)


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_geometric_median_is_weiszfeld_from_the_mean(iters):
    out = _jit(A.geometric_median, iters=iters, eps=1e-8)(X8)
    _close(out, R.weiszfeld(R.flatten(X8), iters), X8)


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("with_center", [False, True])
def test_centered_clipping_matches_the_numpy_loop(iters, with_center):
    flat = R.flatten(X8)
    center = flat[:3].mean(axis=0).astype(np.float32).astype(np.float64) if with_center else None
    # tau between the distances to the center: some inputs are clipped, some are not.
    tau = float(np.median(np.linalg.norm(flat - (0 if center is None else center), axis=1)))
    jax_center = None if center is None else R.unflatten(center.astype(np.float32), X8)
    out = jax.jit(lambda x, c: A.centered_clipping(x, tau, iters=iters, center=c))(X8, jax_center)
    _close(out, R.centered_clipping(flat, tau, iters, center), X8)


def test_centered_clipping_of_inputs_equal_to_the_center_is_the_center():
    x = {"v": jnp.ones((4, 3))}
    out = A.centered_clipping(x, 0.5, iters=2, center={"v": jnp.ones(3)})
    np.testing.assert_array_equal(out["v"], np.ones(3))  # ‖z‖ = 0: no NaN from tau / 0


def test_mean_is_the_mean():
    _close(_jit(A.mean)(X8), R.flatten(X8).mean(axis=0), X8)


@pytest.mark.parametrize(
    ("call", "argument", "words"),
    [
        (lambda: A.krum(X8, 3), "f", "W > 2f + 2 for krum with W = 8"),
        (lambda: A.multi_krum(X8, 1, 9), "m", "at most W = 8"),
        (lambda: A.trimmed_mean(X8, 4), "f", "2f < W"),
        (lambda: A.trimmed_mean(X8, -1), "f", "non-negative"),
        (lambda: A.centered_clipping(X8, 0.0), "tau", "positive"),
        (lambda: A.centered_clipping(X8, 1.0, center={"w": jnp.zeros(3)}), "center", "shapes"),
        (lambda: A.geometric_median(X8, eps=0), "eps", "positive"),
        (lambda: A.mean({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))}), "x", "one W"),
        (lambda: A.coordinate_median({}), "x", "empty"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument, words):
    with pytest.raises(checks.ArgumentError) as info:
        call()
    assert info.value.argument == argument
    assert words in info.value.message
