"""The pre-aggregations (NNM, bucketing) against numpy references on pytree inputs with
outliers, under jit."""

import jax
import numpy as np
import pytest

from jdo import aggregators as A
from jdo import checks
from tests.aggregators import reference as R

X8 = R.inputs(8, outliers=2, seed=2)


def _close_stacked(out, flat_ref, like):
    for i, row in enumerate(flat_ref):
        ref = R.unflatten(row, like)
        for k in like:
            np.testing.assert_allclose(out[k][i], ref[k], rtol=1e-6, atol=1e-6, err_msg=f"{k}[{i}]")


@pytest.mark.parametrize("f", [0, 2, 3])
def test_nearest_neighbor_mixing_averages_the_w_minus_f_nearest(f):
    out = jax.jit(lambda x: A.nearest_neighbor_mixing(x, f))(X8)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in X8.items()}
    _close_stacked(out, R.nearest_neighbor_mixing(R.flatten(X8), f), X8)


@pytest.mark.parametrize("s", [1, 2, 3, 8])  # 3: a last bucket of 2
def test_bucketing_averages_buckets_of_a_random_permutation(s):
    key = jax.random.key(7)
    out = jax.jit(lambda x, k: A.bucketing(x, s, k))(X8, key)
    assert out["b"].shape == (-(-8 // s), 5)
    perm = np.asarray(jax.random.permutation(key, 8))  # the permutation the docstring names
    _close_stacked(out, R.bucketing(R.flatten(X8), s, perm), X8)


def test_bucketing_draws_other_buckets_with_another_key():
    a, b = (A.bucketing(X8, 2, jax.random.key(seed))["b"] for seed in (0, 1))
    assert not np.allclose(a, b)
    # Both are bucket means of a permutation: the same overall mean.
    np.testing.assert_allclose(a.mean(0), b.mean(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "argument", "words"),
    [
        (lambda: A.nearest_neighbor_mixing(X8, 4), "f", "2f < W"),
        (lambda: A.bucketing(X8, 9, jax.random.key(0)), "s", "at most W = 8"),
        (lambda: A.bucketing(X8, 0, jax.random.key(0)), "s", "positive"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument, words):
    with pytest.raises(checks.ArgumentError) as info:
        call()
    assert info.value.argument == argument
    assert words in info.value.message
