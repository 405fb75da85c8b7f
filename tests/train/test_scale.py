"""Simulating many workers: per-worker initialisation, the chunked / sequential map of the
per-worker compute under the vmap lifting, and FedAvg computing only its sampled cohort."""

import jax
import numpy as np
import pytest
from flax import nnx

import jdo
from jdo.train import run

TINY = (
    "task=logistic",
    "model=mlp",
    "model.hidden=[8]",
    "workers=4",
    "seed=3",
    "trainer.steps=1",
    "trainer.log_every=1",
    "trainer.eval_every=1",
    "trainer.progress=false",
    "checkpoint=none",
)


def _eager_init(key):
    """The task's model built on the host from ``key`` (the reference)."""
    model = jdo.models.MLP(in_shape=(16,), num_outputs=1, hidden=[8], rngs=nnx.Rngs(key))
    return jdo.models.functional(model)[1]


@pytest.mark.parametrize("init", ["shared", "per_worker"])
def test_trainer_init_starts_workers_from_their_own_or_the_shared_params(init, make_cfg):
    """One local step of negligible size (no averaging yet): each worker still holds its
    initial params, built from fold_in(key(seed), worker) under per_worker, from the shared
    key(seed) model otherwise."""
    cfg = make_cfg(
        *TINY,
        "algorithm=local_sgd",
        "optimizer=sgd",
        "optimizer.learning_rate=1e-9",
        f"trainer.init={init}",
    )
    params = jax.device_get(run(cfg)["state"].params)
    for i in range(4):
        key = jax.random.fold_in(jax.random.key(3), i) if init == "per_worker" else 3
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_eager_init(key)), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6)
    kernel = params["layers"][0]["kernel"]
    assert np.allclose(kernel[0], kernel[1]) == (init == "shared")
