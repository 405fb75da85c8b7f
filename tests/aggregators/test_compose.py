"""Aggregators as values: binding, composing ("pre-aggregation then rule"), and their checks."""

import jax
import numpy as np
import pytest

from jdo import aggregators as A
from jdo import checks
from tests.aggregators import reference as R

X8 = R.inputs(8, outliers=2, seed=3)


def test_an_aggregator_is_its_function_with_the_parameters_bound():
    krum = A.aggregator("krum", f=2)
    bound, plain = jax.jit(lambda x: (krum(x), A.krum(x, 2)))(X8)
    for k in X8:
        np.testing.assert_array_equal(bound[k], plain[k])
    assert str(krum) == "krum(f=2)" and hash(krum) == hash(A.aggregator("krum", f=2))
    assert krum.is_rule and not krum.needs_key and not krum.uses_center


def test_nnm_then_centered_clipping_is_clipping_of_the_mixed_inputs():
    agg = A.compose(
        A.aggregator("nearest_neighbor_mixing", f=2),
        A.aggregator("centered_clipping", tau=1.0, iters=2),
    )
    assert agg.uses_center and agg.is_rule
    center = {k: v[0] for k, v in X8.items()}
    out = jax.jit(lambda x, c: agg(x, center=c))(X8, center)
    flat = R.nearest_neighbor_mixing(R.flatten(X8), 2)
    ref = R.centered_clipping(flat, 1.0, 2, R.flatten({k: v[:1] for k, v in X8.items()})[0])
    for k, v in R.unflatten(ref, X8).items():
        np.testing.assert_allclose(out[k], v, rtol=1e-6, atol=1e-6)


def test_bucketing_then_krum_draws_with_the_key_it_is_given():
    agg = A.compose(A.aggregator("bucketing", s=2), A.aggregator("krum", f=0))  # 4 buckets
    assert agg.needs_key and str(agg) == "bucketing(s=2) -> krum(f=0)"
    key = jax.random.key(3)
    perm = np.asarray(jax.random.permutation(key, 8))
    buckets = R.bucketing(R.flatten(X8), 2, perm)
    ref = R.unflatten(buckets[R.krum_index(buckets, 0)], X8)
    out = jax.jit(lambda x, k: agg(x, key=k))(X8, key)
    for k, v in ref.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-6, atol=1e-6)


def test_check_counts_the_inputs_each_stage_sees():
    A.aggregator("krum", f=2).check(8)
    with pytest.raises(checks.InvalidArgument, match="W > 2f \\+ 2 for krum with W = 4"):
        A.compose(A.aggregator("bucketing", s=2), A.aggregator("krum", f=1)).check(8)  # 4 buckets
    with pytest.raises(checks.InvalidArgument, match="2f < W"):
        A.aggregator("trimmed_mean", f=4).check(8)
    A.aggregator("mean").check(8, byzantine=4)  # the baseline: allowed, it just breaks
    A.aggregator("coordinate_median").check(8, byzantine=3)
    with pytest.raises(checks.InvalidArgument, match="honest majority") as info:
        A.aggregator("coordinate_median").check(8, byzantine=4)
    assert info.value.argument == "byzantine"


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: A.aggregator("krumm", f=1), "aggregator"),
        (lambda: A.aggregator("krum", g=1), "g"),
        (lambda: A.aggregator("krum"), "f"),
        (lambda: A.aggregator("centered_clipping", tau=-1.0), "tau"),
        (lambda: A.aggregator("centered_clipping", tau=1.0, iters=0), "iters"),
        (lambda: A.aggregator("multi_krum", f=1, m=0), "m"),
        (lambda: A.aggregator("bucketing", s=2, key=0), "key"),
        (
            lambda: A.compose(A.aggregator("krum", f=1), A.aggregator("bucketing", s=2)),
            "aggregators",
        ),
        (lambda: A.compose(A.krum), "aggregators[0]"),
        (lambda: A.aggregator("bucketing", s=2)(X8), "key"),
        (lambda: A.aggregator("krum", f=1)(X8, center=X8), "center"),
    ],
)
def test_bad_aggregators_name_the_argument(call, argument):
    with pytest.raises(checks.ArgumentError) as info:
        call()
    assert info.value.argument == argument, info.value


def test_pipeline_is_compose_from_plain_data():
    """What a config file holds (a list of {name, params}) makes the same aggregator."""
    stages = [
        {"name": "nearest_neighbor_mixing", "f": 1},
        {"name": "centered_clipping", "tau": 1.0},
    ]
    made = A.pipeline(stages)
    assert made == A.compose(
        A.aggregator("nearest_neighbor_mixing", f=1), A.aggregator("centered_clipping", tau=1.0)
    )
    with pytest.raises(TypeError, match=r"stages\[0\]"):
        A.pipeline([{"f": 1}])
