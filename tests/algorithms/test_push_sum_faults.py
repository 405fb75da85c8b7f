"""Push-sum under lost links and crashes: a lost message's weight stays with its sender, so the
effective matrix stays column stochastic and the push-sum mass is conserved; the run equals the
dense recursion built from the host-side masks, under vmap and shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import faults
from jdo import topology as T

W, D, LR, STEPS = 8, 3, 0.1, 8
TARGETS = np.random.default_rng(0).normal(size=(W, D)).astype(np.float32)


def quadratic(params, batch, key):
    """f_i(z) = ½‖z − b_i‖²: the gradient is z − b_i."""
    del key
    loss = 0.5 * jnp.sum(jnp.square(params["z"] - batch))
    return loss, {}


def test_sender_side_effective_matrix_keeps_columns():
    topo = T.star(W, directed=True)
    a, mask = topo.mixing_matrix(0), faults.link_drop(0.5, seed=4).delivered(0, W, directed=True)
    expected = a.copy()
    for i in range(W):
        for j in range(W):
            if i != j and not mask[i, j]:
                expected[j, j] += a[i, j]  # sender j keeps what it could not send
                expected[i, j] = 0.0
    got = topo.effective_matrix(0, mask, lost_to="sender")
    np.testing.assert_allclose(got, expected, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-12)
    assert not np.allclose(got.sum(axis=1), 1.0)  # rows are not stochastic


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_push_sum_with_lost_links_and_a_crash_is_the_sender_side_recursion(lifting, mesh8):
    topo = T.erdos_renyi(W, 0.35, seed=0, directed=True)  # column stochastic only
    drop, crash = faults.link_drop(0.3, seed=5), faults.node_crash([2], at_step=2, rejoin_step=5)
    algo = jdo.algorithms.push_sum(quadratic, optax.sgd(LR), topo, faults=[drop, crash])
    init = jax.jit(jdo.lift(algo.init, lifting, mesh=mesh8, in_axes=(None, 0)))
    step = jax.jit(jdo.lift(algo.step, lifting, mesh=mesh8, in_axes=(0, 0, None)))
    state = init({"z": jnp.zeros(D)}, jnp.zeros((W, 2), jnp.uint32))
    x, w = np.zeros((W, D)), np.ones((W, 1))
    both = faults.combine(drop, crash)
    for t in range(STEPS):
        state, _ = step(state, TARGETS, jax.random.key(t))
        up = both.alive(t, W)[:, None]
        x = x - LR * up * (x / w - TARGETS)  # a down worker takes no local step
        mask = both.delivered(t, W, directed=faults.is_directed(topo))
        a = topo.effective_matrix(t, mask, lost_to="sender")
        np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-12)
        x, w = a @ x, a @ w
        np.testing.assert_allclose(np.asarray(state.weight).sum(), W, rtol=1e-6)  # mass kept
        np.testing.assert_allclose(np.asarray(state.numerator["z"]), x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.weight), w[:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(w, 1.0)  # the drops did unbalance the weights
