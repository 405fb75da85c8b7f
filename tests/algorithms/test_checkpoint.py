"""Every registered algorithm's whole state (error memories, PowerSGD factors, public copies,
trackers, outer momentum, ...) round-trips through an orbax checkpoint, and the run continues
bit-identically from the restored state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo.train import build
from tests.helpers import lifted, orbax_round_trip

EXTRA = {
    "compressed_sgd": ["compression=top_k", "algorithm.error_feedback=ef21"],
    "choco_sgd": ["compression=top_k", "algorithm.gamma=0.3"],
    "diloco": ["algorithm.sync_every=3", "algorithm.fragments=2", "compression=bf16"],
    "fedavg": ["algorithm.local_steps=3", "algorithm.participation=0.5"],
    "local_sgd": ["algorithm.every=3"],
    "powersgd": ["algorithm.rank=2"],
    "dpsgd": ["topology=one_peer_exponential"],
    "push_sum": ["topology=star", "topology.directed=true"],
}


def _run(step, state, batches, start, stop):
    for t in range(start, stop):
        state, _ = step(state, jax.tree.map(lambda b, t=t: b[t], batches), jax.random.key(t))
    return state


@pytest.mark.parametrize("name", jdo.algorithms.available())
def test_state_round_trips_through_orbax_and_continues_identically(name, make_cfg, tmp_path):
    cfg = make_cfg(f"algorithm={name}", "model.hidden=[16]", *EXTRA.get(name, []))
    exp = build(cfg)
    algo, W = exp.algorithm, 8
    idx = np.random.default_rng(0).integers(0, exp.data.count.min(), size=(8, W, 4))
    workers = np.arange(W)[None, :, None]  # each worker draws from its own part
    batches = {
        "x": exp.data.x[workers, idx],
        "y": exp.data.y[workers, idx],
        "weight": np.ones((8, W, 4), np.float32),
    }
    init, step = lifted(algo)
    state = _run(step, init(exp.params, jnp.zeros((W, 2), jnp.uint32)), batches, 0, 4)
    restored = orbax_round_trip(state, tmp_path / "ckpt")
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    straight = _run(step, state, batches, 4, 8)
    resumed = _run(step, restored, batches, 4, 8)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
