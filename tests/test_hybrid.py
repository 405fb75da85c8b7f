"""The hybrid lifting (k = W/D workers on each of D devices): equal to vmap for the algorithms,
collectives lowered to what crosses devices (checked in the compiled HLO), clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jdo
from jdo import comm
from jdo import topology as T
from jdo._logical import plan

B, STEPS, IN, OUT = 4, 10, 8, 3


@functools.cache
def _problem(workers):
    """Softmax regression (one matrix-shaped leaf, for PowerSGD) and each worker's batch."""
    rng = np.random.default_rng(workers)
    params = {"w": jnp.asarray(0.1 * rng.normal(size=(IN, OUT)), jnp.float32)}
    apply = lambda p, x: x @ p["w"]
    batch = {
        "x": rng.normal(size=(workers, B, IN)).astype(np.float32),
        "y": rng.integers(0, OUT, size=(workers, B)).astype(np.int32),
        "weight": np.ones((workers, B), np.float32),
    }
    return jdo.data.make_loss(apply, "classification"), params, batch


ALGORITHMS = {
    "allreduce_sgd": lambda w: {},
    "dpsgd_ring": lambda w: {"topology": T.ring(w)},
    "dpsgd_exponential": lambda w: {"topology": T.exponential(w)},
    "dpsgd_one_peer": lambda w: {"topology": T.one_peer_exponential(w)},
    "choco_sgd": lambda w: {
        "topology": T.ring(w),
        "compressor": jdo.compress.top_k(0.5),
        "gamma": 0.5,
    },
    "powersgd": lambda w: {"rank": 2, "min_compression": 1.0},
}


def _train(name, workers, lifting, mesh):
    """``STEPS`` steps of ``name`` in one jitted scan; the stacked params after them."""
    loss_fn, params, batch = _problem(workers)
    algo_name = "dpsgd" if name.startswith("dpsgd") else name
    algo = jdo.algorithms.get(algo_name)(loss_fn, optax.sgd(0.1), **ALGORITHMS[name](workers))
    lift = functools.partial(jdo.lift, lifting=lifting, mesh=mesh)
    init = lift(algo.init, in_axes=(None, 0))
    step = lift(algo.step, in_axes=(0, 0, None))

    @jax.jit
    def run(params, keys, batch):
        body = lambda s, t: (step(s, batch, jax.random.key(t))[0], None)
        state, _ = jax.lax.scan(body, init(params, keys), jnp.arange(STEPS))
        return algo.params(state)

    return run(params, jax.random.split(jax.random.key(1), workers), batch)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        err = np.abs(x - y) / np.maximum(1.0, np.abs(x))
        assert err.max() <= 1e-6, f"max relative error {err.max():.3g}"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_hybrid_equals_vmap_16_workers(name, mesh8):
    _assert_equal(_train(name, 16, "vmap", None), _train(name, 16, "hybrid", mesh8))


@pytest.mark.parametrize("name", ["dpsgd_exponential", "choco_sgd"])
def test_hybrid_equals_vmap_64_workers(name, mesh8):
    _assert_equal(_train(name, 64, "vmap", None), _train(name, 64, "hybrid", mesh8))
