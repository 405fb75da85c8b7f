"""GAE against a numpy reference, masking at episode boundaries (no learning from the reset),
the last-100-episodes statistics, and rollouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdo.rl import (
    EPISODE_WINDOW,
    advantages_of,
    episode_stats_init,
    episode_stats_merge,
    episode_stats_metrics,
    episode_stats_update,
    gae,
    make_network,
    make_policy,
    make_vec_env,
    rollout,
)


def gae_reference(r, v, nv, term, done, gamma, lam):
    """A_t = Σ_k (γλ)^k δ_{t+k}, summed forward until the episode (or the rollout) ends."""
    T, N = r.shape
    delta = r + gamma * (1 - term) * nv - v
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, k = 0.0, 0
            while t + k < T:
                total += (gamma * lam) ** k * delta[t + k, n]
                if done[t + k, n]:
                    break
                k += 1
            adv[t, n] = total
    return adv


def _random_traj(seed, T=12, N=3):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(T, N)).astype(np.float32)
    v = rng.normal(size=(T, N)).astype(np.float32)
    nv = rng.normal(size=(T, N)).astype(np.float32)
    term = rng.random((T, N)) < 0.15
    done = term | (rng.random((T, N)) < 0.15)
    return r, v, nv, term, done


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0), (1.0, 0.7)])
def test_gae_equals_numpy_reference(gamma, lam):
    r, v, nv, term, done = _random_traj(0)
    adv, ret = gae(*map(jnp.asarray, (r, v, nv, term, done)), gamma=gamma, lam=lam)
    expect = gae_reference(r, v, nv, term.astype(float), done, gamma, lam)
    np.testing.assert_allclose(adv, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, expect + v, rtol=1e-5, atol=1e-5)


def test_lambda_one_gives_n_step_returns_bootstrapped_only_on_truncation():
    """λ=1: the target is the discounted reward sum to the episode's end, plus γ^k V(s') of the
    final observation if the episode was truncated (or the rollout ended), nothing if it
    terminated."""
    gamma = 0.9
    r = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], np.float32)
    # V(s_{t+1}) = next value wherever the episode goes on (as in a real rollout)
    v = np.array([[5.0], [10.0], [7.0], [8.0], [40.0]], np.float32)
    nv = np.array([[10.0], [20.0], [30.0], [40.0], [50.0]], np.float32)
    term = np.array([[0], [1], [0], [0], [0]], bool)  # episode 1 terminates at t=1
    done = np.array([[0], [1], [1], [0], [0]], bool)  # episode 2 is truncated at t=2
    _, ret = gae(*map(jnp.asarray, (r, v, nv, term, done)), gamma=gamma, lam=1.0)
    expect = [1 + gamma * 2, 2, 3 + gamma * 30, 4 + gamma * 5 + gamma**2 * 50, 5 + gamma * 50]
    np.testing.assert_allclose(ret[:, 0], expect, rtol=1e-6)


def test_nothing_flows_across_an_episode_boundary():
    """Changing anything after a done step leaves every advantage up to it unchanged: the
    next episode's first (reset) observation is never learned from as a successor."""
    r, v, nv, term, done = _random_traj(1, T=10, N=1)
    done[:] = False
    done[4] = True
    a, _ = gae(*map(jnp.asarray, (r, v, nv, term, done)), gamma=0.99, lam=0.95)
    r2, v2, nv2 = r.copy(), v.copy(), nv.copy()
    r2[5:], v2[5:], nv2[5:] = 100.0, -100.0, 50.0
    b, _ = gae(*map(jnp.asarray, (r2, v2, nv2, term, done)), gamma=0.99, lam=0.95)
    np.testing.assert_array_equal(a[:5], b[:5])
    assert not np.allclose(a[5:], b[5:])


def test_rollout_bootstraps_from_the_final_observation_not_the_reset_one():
    """A rollout through truncations: the stored successor of a done step is the final
    observation (not the next episode's first one), the next step acts on the reset obs, and
    the advantage of a truncated step bootstraps from V(final observation)."""
    env = make_vec_env("CartPole-v1", 2, max_steps_in_episode=7)
    apply, params = make_network(env, (16,))
    policy = make_policy(env.action_space)
    obs, state = env.reset(jax.random.key(0))
    _, _, traj, stats = jax.jit(
        lambda s, o: rollout(
            env, policy, apply, params, s, o, jax.random.key(1), 20, episode_stats_init()
        )
    )(state, obs)
    done, term = np.asarray(traj.done), np.asarray(traj.terminated)
    trunc = done & ~term
    assert trunc.any() and done.sum() >= 4
    for t, n in zip(*np.nonzero(done[:-1]), strict=True):
        assert not np.allclose(traj.next_obs[t, n], traj.obs[t + 1, n])  # fresh episode
    for t, n in zip(*np.nonzero(~done[:-1]), strict=True):
        np.testing.assert_allclose(traj.next_obs[t, n], traj.obs[t + 1, n], rtol=1e-6)
    gamma = 0.97
    adv, _ = advantages_of(traj, apply, params, gamma=gamma, lam=0.9)
    t, n = np.argwhere(trunc)[0]
    v_final = apply(params, traj.next_obs[t, n][None])[1][0]
    expect = traj.reward[t, n] + gamma * v_final - traj.value[t, n]
    np.testing.assert_allclose(adv[t, n], expect, rtol=1e-5, atol=1e-6)
    assert int(stats.count) == done.sum()


def test_episode_statistics_keep_the_last_100_in_order():
    rng = np.random.default_rng(0)
    stats, finished = episode_stats_init(), []
    update = jax.jit(episode_stats_update)
    for size in (7, 40, 130, 3, 60):  # one call finishes more than 100 episodes
        done = rng.random(size) < 0.8
        returns = rng.normal(size=size).astype(np.float32)
        lengths = rng.integers(1, 500, size=size).astype(np.int32)
        stats = update(stats, jnp.asarray(done), jnp.asarray(returns), jnp.asarray(lengths))
        finished += list(zip(returns[done], lengths[done], strict=True))
        last = finished[-EPISODE_WINDOW:]
        m = episode_stats_metrics(stats)
        np.testing.assert_allclose(m["episode_return"], np.mean([x[0] for x in last]), rtol=1e-5)
        np.testing.assert_allclose(m["episode_length"], np.mean([x[1] for x in last]), rtol=1e-5)
        assert int(m["episodes"]) == len(finished)


def test_episode_statistics_before_any_episode_ends_are_zero():
    m = episode_stats_metrics(episode_stats_init())
    assert float(m["episode_return"]) == 0.0 and float(m["episodes"]) == 0.0


def test_merging_statistics_appends_the_episodes_in_order():
    """An actor's per-rollout statistics merged into the learner's equal one tracker that saw
    every episode in that order (numpy), even when a rollout finished more than 100."""
    rng = np.random.default_rng(1)
    learner, finished = episode_stats_init(), []
    update, merge = jax.jit(episode_stats_update), jax.jit(episode_stats_merge)
    for size in (5, 150, 30, 0, 99):
        returns = rng.normal(size=size).astype(np.float32)
        lengths = rng.integers(1, 500, size=size).astype(np.int32)
        done = np.ones(size, bool)
        rollout_stats = update(episode_stats_init(), done, returns, lengths)
        learner = merge(learner, rollout_stats)
        finished += list(zip(returns, lengths, strict=True))
        last = finished[-EPISODE_WINDOW:]
        m = episode_stats_metrics(learner)
        if last:
            np.testing.assert_allclose(
                m["episode_return"], np.mean([r for r, _ in last]), rtol=1e-5
            )
            np.testing.assert_allclose(
                m["episode_length"], np.mean([n for _, n in last]), rtol=1e-5
            )
        assert int(m["episodes"]) == len(finished)
