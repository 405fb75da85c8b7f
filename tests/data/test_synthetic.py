"""The synthetic problems' optima really are optima: the gradient of the objective vanishes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdo import checks, data, models

PROBLEMS = {
    "least_squares": lambda: data.least_squares(l2=0.0),
    "ridge": lambda: data.least_squares(l2=0.1),
    "logistic": lambda: data.logistic_regression(l2=0.01),
    "heterogeneous": lambda: data.heterogeneous_least_squares(num_groups=4),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_gradient_vanishes_at_optimum(name, float64):
    ds = PROBLEMS[name]()
    apply, _ = models.functional(models.Linear(ds.in_shape, 1, rngs=nnx.Rngs(0)))
    loss_fn = data.make_loss(apply, ds.kind, ds.l2)
    batch = {
        "x": jnp.asarray(ds.x_train, jnp.float64),
        "y": jnp.asarray(ds.y_train),
        "weight": jnp.ones(len(ds.x_train), jnp.float64),
    }
    optimum = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ds.optimum)
    grads, _ = jax.grad(loss_fn, has_aux=True)(optimum, batch)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-10


def test_heterogeneous_groups_have_different_local_optima():
    ds = data.heterogeneous_least_squares(num_groups=4, heterogeneity=1.0)
    assert np.bincount(ds.groups).tolist() == [128] * 4
    local = [
        np.linalg.lstsq(
            np.c_[ds.x_train[ds.groups == g], np.ones(128)],
            ds.y_train[ds.groups == g, 0],
            rcond=None,
        )[0]
        for g in range(4)
    ]
    assert min(np.linalg.norm(local[0] - v) for v in local[1:]) > 0.5


def test_logistic_needs_l2():
    with pytest.raises(checks.InvalidArgument, match="l2 must be a positive number, got 0.0"):
        data.logistic_regression(l2=0.0)
