"""The JAX-native environments: CartPole equals gymnasium's, auto-reset and episode statistics,
the normalisation wrappers against numpy references, and the errors."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdo.checks import InvalidArgument
from jdo.rl import (
    ENVS,
    make_env,
    make_vec_env,
    moments_init,
    moments_update,
    normalize_observation,
    normalize_reward,
    vectorize,
)


def test_cartpole_transitions_equal_gymnasium_over_1000_random_steps():
    """From the same state and action, gymnasium's CartPole-v1 and ours give the same next
    observation, reward, termination and truncation (a short time limit so truncations
    happen too)."""
    limit = 15
    env = make_env("CartPole-v1", max_steps_in_episode=limit)
    ref = gymnasium.make("CartPole-v1", max_episode_steps=limit)
    step, reset = jax.jit(env.step), jax.jit(env.reset)
    rng = np.random.default_rng(0)
    obs, state = reset(jax.random.key(0))
    ref.reset(seed=0)
    counts = {"terminated": 0, "truncated": 0}
    for t in range(1000):
        inner = state.inner
        ref.unwrapped.state = np.array(
            [inner.x, inner.x_dot, inner.theta, inner.theta_dot], np.float64
        )
        action = int(rng.integers(2))
        ref_obs, ref_reward, ref_term, ref_trunc, _ = ref.step(action)
        obs, state, reward, term, trunc, info = step(jax.random.key(t + 1), state, action)
        np.testing.assert_allclose(info["final_observation"], ref_obs, rtol=1e-5, atol=1e-5)
        assert float(reward) == ref_reward
        assert bool(term) == ref_term and bool(trunc) == ref_trunc
        counts["terminated"] += bool(term)
        counts["truncated"] += bool(trunc) and not bool(term)
        if ref_term or ref_trunc:
            ref.reset(seed=t)
            assert int(state.inner.time) == 0  # ours auto-reset; obs is the new episode's
            s = state.inner
            np.testing.assert_array_equal(obs, [s.x, s.x_dot, s.theta, s.theta_dot])
    assert counts["terminated"] > 10 and counts["truncated"] > 5, counts


def test_a_pole_falling_at_the_time_limit_is_terminated_and_truncated_as_in_gymnasium():
    """gymnasium's TimeLimit sets truncated at step 500 whether or not the pole also fell
    there; so do we (and the learner does not bootstrap: terminated wins)."""
    env = make_env("CartPole-v1")
    ref = gymnasium.make("CartPole-v1")  # max_episode_steps=500
    _, state = env.reset(jax.random.key(0))
    falling = np.array([0.0, 0.0, 0.2094, 1.0], np.float32)  # theta crosses 12 degrees next step
    for last_step, want_trunc in ((500, True), (499, False)):
        ref.reset(seed=0)
        ref.unwrapped.state = falling.astype(np.float64)
        assert isinstance(ref, gymnasium.wrappers.TimeLimit)
        ref._elapsed_steps = last_step - 1  # the TimeLimit's step counter
        inner = state.inner.replace(
            x=falling[0],
            x_dot=falling[1],
            theta=falling[2],
            theta_dot=falling[3],
            time=last_step - 1,
        )
        _, ref_reward, ref_term, ref_trunc, _ = ref.step(1)
        _, _, reward, term, trunc, info = env.step(
            jax.random.key(1), state._replace(inner=inner), 1
        )
        assert ref_term and ref_trunc == want_trunc
        assert (bool(term), bool(trunc)) == (ref_term, ref_trunc)
        assert bool(info["done"]) and float(reward) == ref_reward


@pytest.mark.parametrize("name", ENVS)
def test_auto_reset_and_episode_statistics(name):
    """Every copy's episode return/length in ``info`` equal the sums of its rewards/steps since
    its last reset; at done the obs is a fresh reset's, the final obs is the true last one."""
    n = 3
    env = make_vec_env(name, n, max_steps_in_episode=25)
    obs, state = env.reset(jax.random.key(1))
    space = env.action_space

    def body(carry, key):
        state, obs = carry
        a_key, s_key = jax.random.split(key)
        if space.discrete:
            action = jax.random.randint(a_key, (n,), 0, space.n)
        else:
            action = jax.random.uniform(a_key, (n, *space.shape), minval=-2.0, maxval=2.0)
        nxt, state, reward, term, trunc, info = env.step(s_key, state, action)
        return (state, nxt), (obs, nxt, reward, term, trunc, info)

    _, (obs_t, nxt_t, rew, term, trunc, info) = jax.jit(
        lambda s, o: jax.lax.scan(body, (s, o), jax.random.split(jax.random.key(2), 80))
    )(state, obs)
    rew, done = np.asarray(rew), np.asarray(info["done"])
    assert (done == (np.asarray(term) | np.asarray(trunc))).all()
    assert done.sum() >= n * 3  # the 25-step limit ends every episode by then
    for i in range(n):
        ret, length = 0.0, 0
        for t in range(80):
            ret, length = ret + rew[t, i], length + 1
            np.testing.assert_allclose(info["episode_return"][t, i], ret, rtol=1e-5)
            assert info["episode_length"][t, i] == length
            assert bool(trunc[t, i]) == (length == 25)  # the time limit, terminated or not
            if done[t, i]:
                assert length <= 25
                ret, length = 0.0, 0
            else:  # not done: the next obs is the final obs (XLA may round them differently)
                np.testing.assert_allclose(
                    nxt_t[t, i], info["final_observation"][t, i], rtol=1e-6, atol=1e-6
                )
            if t + 1 < 80:
                np.testing.assert_array_equal(obs_t[t + 1, i], nxt_t[t, i])
    # at a done step the returned obs starts a new episode, unlike the final observation
    t, i = np.argwhere(done)[0]
    assert not np.allclose(nxt_t[t, i], info["final_observation"][t, i])


def test_running_moments_equal_numpy_over_all_batches_seen():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(k, 4)).astype(np.float32) for k in (5, 1, 7, 3)]
    m = moments_init((4,))
    for j, b in enumerate(batches):
        m = moments_update(m, jnp.asarray(b))
        seen = np.concatenate(batches[: j + 1])
        np.testing.assert_allclose(m.mean, seen.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.var, seen.var(0), rtol=1e-5, atol=1e-6)
        assert float(m.count) == len(seen)


def _roll(env, steps, key=0):
    obs, state = env.reset(jax.random.key(key))
    n = env.num_envs

    def body(carry, key):
        state = carry
        a_key, s_key = jax.random.split(key)
        action = jax.random.randint(a_key, (n,), 0, 2)
        nxt, state, reward, term, trunc, info = env.step(s_key, state, action)
        return state, (nxt, reward, info)

    state, out = jax.lax.scan(body, state, jax.random.split(jax.random.key(key + 1), steps))
    return obs, state, out


def test_observation_normalisation_against_numpy():
    """Each obs is standardised with the moments of every raw obs seen so far (itself
    included); the statistics live in the env state; the final obs uses the same moments."""
    raw = make_vec_env("CartPole-v1", 4, max_steps_in_episode=20)
    env = normalize_observation(raw, clip=10.0, epsilon=1e-8)
    obs0_raw, _, (raw_next, _, raw_info) = jax.jit(lambda: _roll(raw, 50))()
    obs0, state, (nxt, _, info) = jax.jit(lambda: _roll(env, 50))()
    seen = [np.asarray(obs0_raw)]
    expect = (seen[0] - seen[0].mean(0)) / np.sqrt(seen[0].var(0) + 1e-8)
    np.testing.assert_allclose(obs0, np.clip(expect, -10, 10), rtol=1e-4, atol=1e-4)
    for t in range(50):
        seen.append(np.asarray(raw_next[t]))
        all_seen = np.concatenate(seen).astype(np.float64)
        mu, sd = all_seen.mean(0), np.sqrt(all_seen.var(0) + 1e-8)
        np.testing.assert_allclose(
            nxt[t], np.clip((raw_next[t] - mu) / sd, -10, 10), rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            info["final_observation"][t],
            np.clip((raw_info["final_observation"][t] - mu) / sd, -10, 10),
            rtol=1e-4,
            atol=1e-4,
        )
    np.testing.assert_allclose(state.moments.mean, all_seen.mean(0), rtol=1e-5, atol=1e-6)
    assert float(state.moments.count) == 51 * 4


def test_reward_normalisation_against_numpy():
    """r / sqrt(Var[G] + eps) with G the running discounted return (reset after done), the
    variance over every G so far; the episode return in info stays raw."""
    gamma = 0.9
    raw = make_vec_env("CartPole-v1", 3, max_steps_in_episode=15)
    env = normalize_reward(raw, gamma=gamma, clip=10.0, epsilon=1e-8)
    _, _, (_, raw_rew, raw_info) = jax.jit(lambda: _roll(raw, 60))()
    _, state, (_, rew, info) = jax.jit(lambda: _roll(env, 60))()
    raw_rew, done = np.asarray(raw_rew, np.float64), np.asarray(raw_info["done"])
    g, gs = np.zeros(3), []
    for t in range(60):
        g = gamma * g + raw_rew[t]
        gs.append(g.copy())
        var = np.concatenate(gs).var()
        np.testing.assert_allclose(
            rew[t], np.clip(raw_rew[t] / np.sqrt(var + 1e-8), -10, 10), rtol=1e-4
        )
        g = np.where(done[t], 0.0, g)
    np.testing.assert_allclose(info["episode_return"], raw_info["episode_return"])
    np.testing.assert_allclose(state.discounted_return, g, rtol=1e-5)
    assert done.sum() > 3


def test_pendulum_continuous_actions_and_truncation_only():
    env = make_vec_env("Pendulum-v1", 2)
    assert env.action_space.kind == "continuous" and env.action_space.shape == (1,)
    assert env.action_space.low == (-2.0,) and env.action_space.high == (2.0,)
    assert env.observation_shape == (3,) and env.max_episode_steps == 200
    obs, state = env.reset(jax.random.key(0))

    def body(state, key):
        _, state, reward, term, trunc, _ = env.step(key, state, jnp.ones((2, 1)))
        return state, (reward, term, trunc)

    _, (reward, term, trunc) = jax.lax.scan(body, state, jax.random.split(jax.random.key(1), 400))
    assert not np.asarray(term).any()
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(trunc)[:, 0]), [199, 399])
    assert (np.asarray(reward) <= 0).all()


def test_bad_inputs_name_what_is_allowed():
    with pytest.raises(InvalidArgument, match="name must be one of 'CartPole-v1', "):
        make_env("Pong")
    with pytest.raises(InvalidArgument, match="max_steps is not a parameter of CartPole-v1; all"):
        make_env("CartPole-v1", max_steps=3)
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        vectorize(make_env("CartPole-v1"), 0)
    with pytest.raises(InvalidArgument, match="env must be a vector env"):
        normalize_observation(make_env("CartPole-v1"))
    with pytest.raises(InvalidArgument, match=r"gamma must be in \[0, 1\], got 1.5"):
        normalize_reward(make_vec_env("CartPole-v1", 2), gamma=1.5)
