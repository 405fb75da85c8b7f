"""Actor-critic networks and the categorical / diagonal Gaussian policies against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdo.models import functional
from jdo.rl import ActionSpace, ActorCritic, make_policy

DISCRETE = ActionSpace("discrete", n=3)
BOX = ActionSpace("continuous", shape=(2,), low=(-1.0, -2.0), high=(1.0, 2.0))


def test_categorical_log_prob_entropy_and_sampling_equal_numpy():
    policy = make_policy(DISCRETE)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    p = np.exp(np.asarray(logits, np.float64))
    p /= p.sum(-1, keepdims=True)
    actions = jnp.array([0, 1, 2, 1, 0])
    np.testing.assert_allclose(
        policy.log_prob(logits, actions), np.log(p[np.arange(5), actions]), rtol=1e-5
    )
    np.testing.assert_allclose(policy.entropy(logits), -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(policy.mode(logits), p.argmax(-1))
    draws = jax.vmap(lambda k: policy.sample(k, logits[0]))(
        jax.random.split(jax.random.key(0), 20000)
    )
    freq = np.bincount(np.asarray(draws), minlength=3) / 20000
    np.testing.assert_allclose(freq, p[0], atol=0.015)


def test_gaussian_log_prob_entropy_sampling_and_clipping_equal_numpy():
    policy = make_policy(BOX)
    mean = np.array([[0.3, -1.0], [2.0, 0.5]], np.float32)
    log_std = np.array([[-0.5, 0.2], [-0.5, 0.2]], np.float32)
    out = jnp.asarray(np.concatenate([mean, log_std], -1))
    a = np.array([[0.1, 0.4], [1.5, -3.0]], np.float32)
    std = np.exp(log_std.astype(np.float64))
    ref = (-0.5 * ((a - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(policy.log_prob(out, jnp.asarray(a)), ref, rtol=1e-5)
    entropy = (np.log(std) + 0.5 * np.log(2 * np.pi * np.e)).sum(-1)
    np.testing.assert_allclose(policy.entropy(out), entropy, rtol=1e-5)
    draws = jax.vmap(lambda k: policy.sample(k, out[0]))(jax.random.split(jax.random.key(1), 20000))
    np.testing.assert_allclose(np.mean(draws, 0), mean[0], atol=0.03)
    np.testing.assert_allclose(np.std(draws, 0), std[0], rtol=0.03)
    clipped = np.array([[0.1, 0.4], [1.0, -2.0]], np.float32)
    np.testing.assert_array_equal(policy.to_env(jnp.asarray(a)), clipped)
    np.testing.assert_array_equal(policy.mode(out), mean)


def test_actor_critic_outputs_and_initial_policy():
    for space, width in ((DISCRETE, 3), (BOX, 4)):
        apply, params = functional(ActorCritic(5, space, hidden=(16, 16), rngs=nnx.Rngs(0)))
        out, value = apply(params, jnp.ones((7, 5)))
        assert out.shape == (7, width) and value.shape == (7,)
        # the policy head starts near uniform / zero mean (gain 0.01), log std at 0
        assert float(jnp.abs(out[:, : space.size]).max()) < 0.1
    np.testing.assert_array_equal(out[:, 2:], 0.0)
    assert "log_std" in params
