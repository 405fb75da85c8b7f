"""Each compressor against a numpy reference, its wire size, and its (un)biasedness."""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jdo import checks
from jdo import compress as C

X = np.random.default_rng(0).normal(size=(40, 25)).astype(np.float32)  # d = 1000


def test_identity_is_exact():
    np.testing.assert_array_equal(C.identity()(X), X)
    assert C.identity().wire_bytes(X) == 4 * X.size


@pytest.mark.parametrize("k", [1, 10, 999])
def test_top_k_keeps_the_k_largest(k):
    out = np.asarray(C.top_k(k=k)(X))
    expected = np.zeros(X.size, np.float32)
    keep = np.argsort(-np.abs(X.ravel()), kind="stable")[:k]
    expected[keep] = X.ravel()[keep]
    np.testing.assert_array_equal(out.ravel(), expected)
    assert C.top_k(k=k).wire_bytes(X) == 8 * k  # f32 values + int32 indices


def test_top_k_with_k_equal_d_is_exact():
    np.testing.assert_array_equal(C.top_k(k=X.size)(X), X)
    np.testing.assert_array_equal(C.top_k(ratio=1.0)(X), X)


def test_random_k_is_a_scaled_subset_and_unbiased():
    c = C.random_k(k=100)
    out = np.asarray(c(X, jax.random.key(0))).ravel()
    nz = np.flatnonzero(out)
    assert len(nz) == 100
    np.testing.assert_allclose(out[nz], X.ravel()[nz] * 10, rtol=1e-6)
    _assert_unbiased(c, samples=4000, std=np.abs(X) * math.sqrt(X.size / 100 - 1))


@pytest.mark.parametrize("scale,expected", [(True, 100 / 10 - 1), (False, 1 - 10 / 100)])
def test_random_k_error_is_what_contractive_says(scale, expected):
    # E||x̂ − x||² / ||x||² = d/k − 1 scaled (not contractive: error feedback's memory grows
    # without bound) and 1 − k/d unscaled (contractive, as EF and CHOCO need).
    c = C.random_k(k=10, scale=scale)
    x = jnp.asarray(np.random.default_rng(0).normal(size=100), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 4000)
    errors = jax.vmap(lambda k: jnp.sum((c(x, k) - x) ** 2))(keys) / jnp.sum(x**2)
    assert abs(float(errors.mean()) - expected) < 0.05 * expected
    assert c.contractive is (expected < 1)
    assert C.top_k(0.1).contractive and C.identity().contractive


def _assert_unbiased(c, samples, std):
    """The mean of x̂ over independent keys is within 5 standard errors of x in every
    coordinate, with the compressor's exact per-coordinate standard deviation ``std``."""
    keys = jax.random.split(jax.random.key(1), samples)
    draws = np.asarray(jax.vmap(lambda k: c(jnp.asarray(X), k))(keys), np.float64)
    assert np.all(np.abs(draws.mean(0) - X) <= 5 * std / math.sqrt(samples) + 1e-5)


@pytest.mark.parametrize("levels", [1, 4, 127])
def test_qsgd_values_on_the_grid_and_unbiased(levels):
    c = C.qsgd(levels)
    norm = np.linalg.norm(X)
    out = np.asarray(c(X, jax.random.key(3)))
    grid = out / norm * levels
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)  # on the grid
    lower = np.floor(np.abs(X) / norm * levels)
    assert np.all((np.abs(np.round(grid)) == lower) | (np.abs(np.round(grid)) == lower + 1))
    assert np.all(np.sign(out) * np.sign(X) >= 0)
    unit = norm / levels
    frac = np.abs(X) / unit - lower
    _assert_unbiased(c, samples=3000, std=unit * np.sqrt(frac * (1 - frac)))
    assert c.wire_bytes(X) == X.size + 4  # int8 codes + f32 norm


def test_scaled_sign():
    out = np.asarray(C.scaled_sign()(X))
    np.testing.assert_allclose(out, np.abs(X).mean() * np.where(X >= 0, 1, -1), rtol=1e-6)
    assert C.scaled_sign().wire_bytes(X) == 125 + 4  # 1000 bits + f32 scale


def test_casts():
    np.testing.assert_array_equal(C.bf16()(X), X.astype(ml_dtypes.bfloat16).astype(np.float32))
    scale = np.abs(X).max() / 448.0
    expected = (X / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    np.testing.assert_allclose(C.fp8()(X), expected, rtol=1e-6)
    assert C.bf16().wire_bytes(X) == 2000 and C.fp8().wire_bytes(X) == 1004


def test_trees_and_bad_arguments():
    tree = {"a": X, "b": X[0]}
    payloads = C.compress_tree(C.top_k(k=3), tree)
    back = C.decompress_tree(C.top_k(k=3), payloads, tree)
    assert np.count_nonzero(back["a"]) == 3 and np.count_nonzero(back["b"]) == 3
    assert C.tree_wire_bytes(C.top_k(k=3), tree) == 48
    cases = [
        (C.top_k, (), checks.InvalidArgument, "ratio", "or k must be given, not both"),
        (C.top_k, (1.5,), checks.InvalidArgument, "ratio", r"must be in \(0, 1\], got 1.5"),
        (C.random_k, (1.5,), checks.InvalidArgument, "ratio", r"must be in \(0, 1\], got 1.5"),
        (C.random_k, (0.0,), checks.InvalidArgument, "ratio", r"must be in \(0, 1\], got 0.0"),
        (C.top_k, ("0.1",), checks.WrongType, "ratio", "must be a number"),
        (C.qsgd, (300,), checks.InvalidArgument, "levels", "must be in 1..127"),
    ]
    for factory, args, kind, argument, message in cases:
        with pytest.raises(kind, match=message) as e:
            factory(*args)
        assert e.value.argument == argument
    with pytest.raises(checks.InvalidArgument, match="is required: qsgd rounds at random"):
        C.qsgd()(X)
    with pytest.raises(checks.InvalidArgument, match=r"must be in \(0, 1\]") as e:
        C.top_k(k=None, ratio=2)
    assert str(e.value) == "ratio must be in (0, 1], got 2"


def test_the_unbiasedness_check_can_fail():
    with pytest.raises(AssertionError):  # scaled sign is biased
        _assert_unbiased(C.scaled_sign(), samples=10, std=np.zeros_like(X))
