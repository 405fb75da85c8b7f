"""Straggler draws: deterministic per (key, worker, step), identical under jit and vmap, with the
moments their formulas give."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo.system as system
from jdo.checks import InvalidArgument

KEY = jax.random.key(7)
C = 0.25  # base compute seconds
MODELS = {
    "shifted_exponential": system.shifted_exponential(1.0, 0.5),
    "lognormal": system.lognormal(0.6),
    "slow_worker": system.slow_worker([0, 3], 10.0),
    "pauses": system.pauses(0.3, 2.0),
}
WORKERS, STEPS = 64, 64  # 4096 draws per model


@pytest.fixture(scope="module")
def draws():
    """[WORKERS, STEPS] draws of every model, by one jit(vmap(vmap(sample))) over traced int32
    worker and step."""

    def grids(key, workers, steps):
        return {
            name: jax.vmap(jax.vmap(model.sample, (None, None, 0, None)), (None, 0, None, None))(
                key, workers, steps, C
            )
            for name, model in MODELS.items()
        }

    out = jax.jit(grids)(KEY, jnp.arange(WORKERS, dtype=jnp.int32), jnp.arange(STEPS))
    return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def single():
    """Each model's draw for worker 5 at step 11, under jit with traced int32 scalars."""
    one = lambda key, w, s: {n: m.sample(key, w, s, C) for n, m in MODELS.items()}
    return jax.jit(one)(KEY, jnp.int32(5), jnp.int32(11))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_draw_under_jit_and_under_vmap(name, draws, single):
    assert single[name].dtype == jnp.float32 and single[name].shape == ()
    assert draws[name].dtype == np.float32
    assert float(single[name]) == float(draws[name][5, 11])


def test_same_draw_eagerly_and_twice(single):
    model = MODELS["shifted_exponential"]
    eager = model.sample(KEY, 5, 11, C)
    assert float(eager) == float(single["shifted_exponential"])
    assert float(model.sample(KEY, 5, 11, C)) == float(eager)


def test_draws_come_from_fold_in_worker_then_step():
    w, s = 3, 9
    key = jax.random.fold_in(jax.random.fold_in(KEY, w), s)
    x = float(jax.random.exponential(key, dtype=jnp.float32))
    got = float(system.shifted_exponential(0.0, 1.0).sample(KEY, w, s, 1.0))
    assert got == pytest.approx(x, rel=1e-6)
    n = float(jax.random.normal(key, dtype=jnp.float32))
    got = float(system.lognormal(0.5).sample(KEY, w, s, 2.0))
    assert got == pytest.approx(2.0 * np.exp(0.5 * n - 0.125), rel=1e-6)


def test_workers_and_steps_draw_differently(draws):
    x = draws["shifted_exponential"]
    assert (x[0] != x[1]).all() and (x[:, 0] != x[:, 1]).all()  # workers, steps: independent


def _within(sample, mean, std, sigmas=4.5):
    """|sample mean - mean| within `sigmas` standard errors (false alarm ~ 7e-6)."""
    err = std / np.sqrt(sample.size)
    assert abs(sample.mean() - mean) < sigmas * err, (sample.mean(), mean, err)


def test_shifted_exponential_moments(draws):
    x = draws["shifted_exponential"]
    shift, mean = 1.0, 0.5
    assert x.min() >= C * shift * (1 - 1e-6)
    _within(x, C * (shift + mean), C * mean)  # exponential: std = mean


def test_lognormal_moments(draws):
    x = draws["lognormal"]
    sigma = 0.6
    _within(x, C, C * np.sqrt(np.exp(sigma**2) - 1))
    _within(np.log(x / C), -(sigma**2) / 2, sigma)


def test_pauses_moments(draws):
    x = draws["pauses"]
    prob, pause = 0.3, 2.0
    assert set(np.round(np.unique(x), 6)) == {C, round(C + pause, 6)}
    _within(x, C + prob * pause, pause * np.sqrt(prob * (1 - prob)))


def test_slow_worker_is_exact(draws):
    x = draws["slow_worker"]
    expected = np.full((WORKERS, STEPS), C, np.float32)
    expected[[0, 3]] = np.float32(C) * np.float32(10.0)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: system.shifted_exponential(-1.0, 0.5), "shift"),
        (lambda: system.shifted_exponential(1.0, -0.5), "mean"),
        (lambda: system.lognormal(-0.1), "sigma"),
        (lambda: system.slow_worker([], 2.0), "workers"),
        (lambda: system.slow_worker([-1], 2.0), "workers"),
        (lambda: system.slow_worker([0], 0.0), "factor"),
        (lambda: system.pauses(1.5, 1.0), "prob"),
        (lambda: system.pauses(0.5, -1.0), "seconds"),
    ],
)
def test_bad_values_name_the_argument(make, argument):
    with pytest.raises(InvalidArgument) as e:
        make()
    assert e.value.argument == argument
