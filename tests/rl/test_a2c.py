"""A2C and bounded-staleness A3C: the loss against numpy, A3C with τ=0 is A2C, and A3C's update
against a per-worker reference that keeps every param version in a Python list."""

import jax
import numpy as np
import optax
import pytest

import jdo
from jdo.checks import InvalidArgument, WrongType
from jdo.rl import (
    a2c,
    a3c,
    actor_critic_loss,
    advantages_of,
    make_network,
    make_policy,
    make_vec_env,
    rollout,
)
from jdo.rl.a2c import flatten_batch


def _lifted(algo, W):
    init = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
    step = jax.jit(jax.vmap(algo.step, in_axes=(0, None, 0), axis_name=jdo.WORKERS))
    return init, step


def test_actor_critic_loss_equals_numpy():
    env = make_vec_env("CartPole-v1", 5)
    apply, params = make_network(env, (8,))
    policy = make_policy(env.action_space)
    rng = np.random.default_rng(0)
    batch = {
        "obs": rng.normal(size=(20, 4)).astype(np.float32),
        "action": rng.integers(0, 2, 20).astype(np.int32),
        "advantage": rng.normal(size=20).astype(np.float32),
        "return": rng.normal(size=20).astype(np.float32),
    }
    loss, m = actor_critic_loss(apply, policy, params, batch, value_coef=0.3, entropy_coef=0.1)
    logits, value = (np.asarray(x, np.float64) for x in apply(params, batch["obs"]))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    pg = -np.mean(logp[np.arange(20), batch["action"]] * batch["advantage"])
    vl = 0.5 * np.mean((value - batch["return"]) ** 2)
    ent = np.mean(-(np.exp(logp) * logp).sum(-1))
    np.testing.assert_allclose(loss, pg + 0.3 * vl - 0.1 * ent, rtol=1e-5)
    np.testing.assert_allclose(m["entropy"], ent, rtol=1e-5)


def test_a3c_with_staleness_zero_is_a2c():
    env = make_vec_env("CartPole-v1", 3)
    apply, params = make_network(env, (16,))
    kw = dict(num_steps=6, gae_lambda=0.9)
    states = []
    for algo in (
        a2c(env, apply, optax.adam(1e-2), **kw),
        a3c(env, apply, optax.adam(1e-2), staleness=0, **kw),
    ):
        init, step = _lifted(algo, 2)
        state = init(params, jax.random.split(jax.random.key(0), 2))
        for t in range(3):
            state, metrics = step(state, None, jax.random.split(jax.random.key(t + 1), 2))
        states.append(state)
    for a, b in zip(jax.tree.leaves(states[0][:6]), jax.tree.leaves(states[1][:6]), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics["staleness"], 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cyclic", "random"])
def test_a3c_applies_the_mean_of_gradients_at_the_scheduled_stale_versions(schedule):
    """Reference: a Python list of every param version; worker i at step t rolls out and
    differentiates with version t - min(lag_i(t), t); the mean gradient, clipped, goes through
    Adam onto the current params."""
    W, tau, steps, T = 3, 2, 5, 4
    env = make_vec_env("CartPole-v1", 2)
    apply, params = make_network(env, (16,))
    policy = make_policy(env.action_space)
    algo = a3c(
        env,
        apply,
        optax.adam(3e-2),
        staleness=tau,
        schedule=schedule,
        num_steps=T,
        gae_lambda=0.9,
        max_grad_norm=0.5,
    )
    init, step = _lifted(algo, W)
    init_keys = jax.random.split(jax.random.key(0), W)
    step_keys = [jax.random.split(jax.random.key(t + 1), W) for t in range(steps)]
    state = init(params, init_keys)
    lags_seen = []
    for t in range(steps):
        state, metrics = step(state, None, step_keys[t])
        lags_seen.append(np.asarray(metrics["staleness"]))

    # -- the reference --------------------------------------------------------------------------
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-2))
    versions, opt_state = [params], tx.init(params)
    envs = [env.reset(k) for k in init_keys]  # (obs, env_state) per worker
    loss = lambda p, b: actor_critic_loss(apply, policy, p, b)
    grad_of = jax.jit(lambda p, s, o, k: _grad(env, policy, apply, loss, p, s, o, k, T))
    for t in range(steps):
        grads = []
        for i in range(W):
            roll_key, sched_key = jax.random.split(step_keys[t][i])
            if schedule == "cyclic":
                lag = i % (tau + 1)
            else:
                lag = int(jax.random.randint(sched_key, (), 0, tau + 1))
            lag = min(lag, t)
            assert lags_seen[t][i] == lag
            obs, env_state = envs[i]
            g, env_state, obs = grad_of(versions[t - lag], env_state, obs, roll_key)
            envs[i] = (obs, env_state)
            grads.append(g)
        mean = jax.tree.map(lambda *g: sum(g) / W, *grads)
        updates, opt_state = tx.update(mean, opt_state, versions[-1])
        versions.append(optax.apply_updates(versions[-1], updates))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(versions[-1]), strict=True):
        for i in range(W):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    for k in range(tau + 1):  # the ring buffer holds the last τ+1 versions
        v = steps - k
        for a, b in zip(jax.tree.leaves(state.history), jax.tree.leaves(versions[v]), strict=True):
            np.testing.assert_allclose(a[0, v % (tau + 1)], b, rtol=1e-5, atol=1e-6)
    assert len({tuple(x) for x in lags_seen}) > 1  # the lags really vary


def _grad(env, policy, apply, loss, params, env_state, obs, key, T):
    from jdo.rl import episode_stats_init

    env_state, obs, traj, _ = rollout(
        env, policy, apply, params, env_state, obs, key, T, episode_stats_init()
    )
    adv, ret = advantages_of(traj, apply, params, gamma=0.99, lam=0.9)
    grads = jax.grad(lambda p: loss(p, flatten_batch(traj, adv, ret))[0])(params)
    return grads, env_state, obs


def test_bad_arguments_name_what_is_allowed():
    env = make_vec_env("CartPole-v1", 2)
    apply, _ = make_network(env, (8,))
    adam = optax.adam(1e-3)
    cases = [
        (
            lambda: a3c(env, apply, adam, staleness=-1),
            InvalidArgument,
            "staleness",
            "must be a non-negative integer",
        ),
        (
            lambda: a3c(env, apply, adam, schedule="lifo"),
            InvalidArgument,
            "schedule",
            "must be one of 'cyclic', 'random'",
        ),
        (lambda: a2c(env, apply, adam, gamma=1.5), InvalidArgument, "gamma", r"in \[0, 1\]"),
        (lambda: a2c(env, apply, adam, gae_lambda=-0.1), InvalidArgument, "gae_lambda", "in"),
        (lambda: a2c(env, apply, 0.1), WrongType, "optimizer", "optax.GradientTransformation"),
        (
            lambda: a2c(env, apply, adam, max_grad_norm=0.0),
            InvalidArgument,
            "max_grad_norm",
            "must be a positive number",
        ),
        (
            lambda: a2c(jdo.rl.make_env("CartPole-v1"), apply, adam),
            InvalidArgument,
            "env",
            "must be a vector env",
        ),
        (lambda: a2c("CartPole-v1", apply, adam), WrongType, "env", "must be a vector jdo.rl.Env"),
    ]
    for make, kind, argument, message in cases:
        with pytest.raises(kind, match=message) as e:
            make()
        assert e.value.argument == argument
