"""evaluate_policy against gymnasium: the same start states and the same (linear) policy give
the same episode returns; every episode runs to its end."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdo.rl import evaluate_policy, make_env, make_vec_env

LIMIT = 40
# A crude linear controller: push right when the pole leans right. Its swings grow: episodes
# last 25 to 52 steps, so some reach the time limit and some fall before it.
W = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)


def _apply(scale):
    def apply(params, obs):
        return scale * (obs @ params), jnp.zeros(obs.shape[0])

    return apply


def _gymnasium_returns(starts):
    ref = gymnasium.make("CartPole-v1", max_episode_steps=LIMIT)
    returns = []
    for start in starts:
        ref.reset(seed=0)
        ref.unwrapped.state = np.asarray(start, np.float64)
        obs, total, ended = np.asarray(start, np.float32), 0.0, False
        while not ended:
            action = int(np.argmax(obs.astype(np.float32) @ W))
            obs, reward, terminated, truncated, _ = ref.step(action)
            total += reward
            ended = terminated or truncated
        returns.append(total)
    return np.array(returns)


@pytest.mark.parametrize("greedy", [True, False])
def test_returns_equal_gymnasium_episodes_from_the_same_start_states(greedy):
    n, key = 24, jax.random.key(3)
    # evaluate_policy's episode i starts from reset(split(split(key)[0], n)[i])
    starts, _ = make_vec_env("CartPole-v1", n).reset(jax.random.split(key)[0])
    want = _gymnasium_returns(np.asarray(starts))
    assert len(set(want.tolist())) > 5 and want.max() == LIMIT > want.min()
    # Sampling from logits scaled by 1e6 picks the greedy action (the other has probability
    # exp(-1e6 |theta|), 0 in float32 unless |theta| < 1e-4): the same episodes.
    env = make_env("CartPole-v1", max_steps_in_episode=LIMIT)
    got = jax.jit(
        lambda k: evaluate_policy(
            env, _apply(1.0 if greedy else 1e6), jnp.asarray(W), k, num_episodes=n, greedy=greedy
        )
    )(key)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_bad_arguments():
    env = make_env("CartPole-v1")
    with pytest.raises(ValueError, match="num_episodes must be a positive integer"):
        evaluate_policy(env, _apply(1.0), W, jax.random.key(0), num_episodes=0)
    with pytest.raises(ValueError, match="env must be a single env"):
        evaluate_policy(make_vec_env("CartPole-v1", 2), _apply(1.0), W, jax.random.key(0))
    with pytest.raises(TypeError, match="env must be an environment id"):
        evaluate_policy(3, _apply(1.0), W, jax.random.key(0))
