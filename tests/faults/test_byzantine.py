"""Each attack against its formula in numpy (honest mean and population std over the honest
rows), under jit; label flipping; and the checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jdo import checks, faults

W = 10
BAD = [2, 7]
RNG = np.random.default_rng(0)
XS = {
    "a": RNG.normal(size=(W, 3, 2)).astype(np.float32),
    "b": RNG.normal(size=(W,)).astype(np.float32),
}
HONEST = ~np.isin(np.arange(W), BAD)


def _corrupt(attack, step=0):
    model = faults.byzantine(BAD, attack, seed=3)
    return jax.tree.map(np.asarray, jax.jit(model.corrupt)(XS, jnp.int32(step)))


def _expect_rows(out, forged):
    """Honest rows unchanged; every Byzantine row equals ``forged(leaf_honest_rows)``."""
    for k, leaf in XS.items():
        np.testing.assert_array_equal(out[k][HONEST], leaf[HONEST])
        want = forged(leaf[HONEST].astype(np.float64))
        for b in BAD:
            np.testing.assert_allclose(out[k][b], want, rtol=1e-5, atol=1e-6, err_msg=k)


def test_sign_flip_sends_minus_the_honest_mean():
    _expect_rows(_corrupt("sign_flip"), lambda h: -h.mean(axis=0))


def test_ipm_sends_minus_eps_times_the_honest_mean():
    _expect_rows(_corrupt(faults.ipm(0.5)), lambda h: -0.5 * h.mean(axis=0))


def test_alie_sends_mean_minus_z_std_with_the_papers_z():
    f = len(BAD)
    s = np.floor(W / 2 + 1) - f
    z = norm.ppf((W - s) / W)
    assert faults.alie_z(W, f) == pytest.approx(z, abs=1e-12)
    _expect_rows(_corrupt(faults.alie()), lambda h: h.mean(axis=0) - z * h.std(axis=0))
    _expect_rows(_corrupt(faults.alie(z=1.5)), lambda h: h.mean(axis=0) - 1.5 * h.std(axis=0))


def test_gaussian_draws_per_worker_step_and_leaf():
    xs = {"a": XS["a"], "c": np.zeros((W, 4000), np.float32)}
    corrupt = jax.jit(faults.byzantine(BAD, faults.gaussian(2.0), seed=3).corrupt)
    out, later = (jax.tree.map(np.asarray, corrupt(xs, jnp.int32(t))) for t in (0, 1))
    for k, leaf in xs.items():
        np.testing.assert_array_equal(out[k][HONEST], leaf[HONEST])
        assert not np.allclose(out[k][BAD], later[k][BAD])  # a new draw each step
        assert not np.allclose(out[k][BAD[0]], out[k][BAD[1]])  # and each worker
    for b in BAD:  # the documented keys: fold_in(fold_in(key(seed), w), step), then the leaf
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), b), 0)
        for index, k in enumerate(sorted(xs)):
            draw = jax.random.normal(jax.random.fold_in(key, index), xs[k].shape[1:])
            np.testing.assert_allclose(out[k][b], 2.0 * np.asarray(draw), rtol=1e-6, atol=1e-6)
    big = out["c"][BAD]
    assert abs(big.std() - 2.0) < 0.05 and abs(big.mean()) < 0.05


def test_label_flip_flips_only_the_byzantine_workers_labels():
    model = faults.byzantine(BAD, faults.label_flip)
    out = _corrupt("label_flip")
    for k in XS:
        np.testing.assert_array_equal(out[k], XS[k])  # a data attack leaves updates alone
    y = jnp.asarray([0, 3, 9, 5])
    labels = jax.jit(jax.vmap(lambda w: model.labels(y, 10, w)))(jnp.arange(W))
    for w in range(W):
        want = 9 - np.asarray(y) if w in BAD else np.asarray(y)
        np.testing.assert_array_equal(labels[w], want)
    other = faults.byzantine(BAD, "sign_flip")
    assert other.labels(y, 10, 2) is y


def test_bad_byzantine_arguments_name_the_argument():
    cases = [
        (lambda: faults.byzantine([], "sign_flip"), "workers"),
        (lambda: faults.byzantine([0], "nonsense"), "attack"),
        (lambda: faults.byzantine([0], 3), "attack"),
        (lambda: faults.gaussian(-1.0), "std"),
        (lambda: faults.ipm(0.0), "eps"),
        (lambda: faults.byzantine([12], "sign_flip").corrupt(XS, 0), "workers"),
        (lambda: faults.byzantine(range(6), "alie").corrupt(XS, 0), "attack"),
    ]
    for make, argument in cases:
        with pytest.raises(checks.ArgumentError) as err:
            make()
        assert err.value.argument == argument, err.value
