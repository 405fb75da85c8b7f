"""Rollouts of a policy in a vector env, generalized advantage estimation, and the
last-100-episodes return statistics that RL algorithms keep in their state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdo.rl.envs import Env
from jdo.rl.networks import Policy

EPISODE_WINDOW = 100


class Transition(NamedTuple):
    """One step of every env copy; in a trajectory each leaf has a leading ``[T]`` axis."""

    obs: jax.Array  # f32[N, obs]: what the policy saw
    action: jax.Array  # [N, ...]: the sampled action (unclipped)
    log_prob: jax.Array  # f32[N]: log pi(action | obs) under the acting params
    value: jax.Array  # f32[N]: V(obs)
    reward: jax.Array  # f32[N]
    terminated: jax.Array  # bool[N]: a true terminal state: no bootstrap
    done: jax.Array  # bool[N]: terminated or truncated: the episode ends here
    next_obs: jax.Array  # f32[N, obs]: the true next observation (final one when done)


class EpisodeStats(NamedTuple):
    """The returns of the last ``EPISODE_WINDOW`` finished episodes (a ring buffer)."""

    returns: jax.Array  # f32[EPISODE_WINDOW]
    lengths: jax.Array  # int32[EPISODE_WINDOW]
    count: jax.Array  # int32: episodes finished so far


def episode_stats_init() -> EpisodeStats:
    return EpisodeStats(
        jnp.zeros((EPISODE_WINDOW,), jnp.float32),
        jnp.zeros((EPISODE_WINDOW,), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def episode_stats_update(stats: EpisodeStats, done, returns, lengths) -> EpisodeStats:
    """Appends the ``returns[done]`` (any shape; row-major order is the time order) to the ring.

    If more than ``EPISODE_WINDOW`` episodes finish in one call, the last ones are kept.
    """
    done, returns, lengths = done.ravel(), returns.ravel(), lengths.ravel()
    rank = jnp.cumsum(done.astype(jnp.int32)) - 1  # order among this call's finished episodes
    n_new = jnp.sum(done.astype(jnp.int32))
    keep = done & (rank >= n_new - EPISODE_WINDOW)
    slot = jnp.where(keep, (stats.count + rank) % EPISODE_WINDOW, EPISODE_WINDOW)
    return EpisodeStats(
        stats.returns.at[slot].set(returns.astype(jnp.float32), mode="drop"),
        stats.lengths.at[slot].set(lengths.astype(jnp.int32), mode="drop"),
        stats.count + n_new,
    )


def episode_stats_merge(stats: EpisodeStats, new: EpisodeStats) -> EpisodeStats:
    """Appends the episodes of ``new`` (those it still holds, oldest first) to ``stats``: an
    actor's statistics of one rollout merged into the learner's (``jdo.rl.async_a3c``,
    ``jdo.rl.host.sebulba``)."""
    held = jnp.minimum(new.count, EPISODE_WINDOW)
    order = (new.count - held + jnp.arange(EPISODE_WINDOW)) % EPISODE_WINDOW  # oldest first
    valid = jnp.arange(EPISODE_WINDOW) < held
    # Count the episodes `new` no longer holds as if written first: the ring stays consistent
    # (its newest entry at slot count - 1), and the count includes them.
    skipped = stats._replace(count=stats.count + new.count - held)
    return episode_stats_update(skipped, valid, new.returns[order], new.lengths[order])


def episode_stats_metrics(stats: EpisodeStats) -> dict[str, jax.Array]:
    """``episode_return``/``episode_length``: means over the last (up to) 100 finished
    episodes (0 before the first one ends); ``episodes``: how many have finished."""
    n = jnp.minimum(stats.count, EPISODE_WINDOW)
    valid = jnp.arange(EPISODE_WINDOW) < n
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    return {
        "episode_return": jnp.sum(jnp.where(valid, stats.returns, 0.0)) / denom,
        "episode_length": jnp.sum(jnp.where(valid, stats.lengths, 0)).astype(jnp.float32) / denom,
        "episodes": stats.count.astype(jnp.float32),
    }


def rollout(
    env: Env,
    policy: Policy,
    apply: Callable,
    params: Any,
    env_state: Any,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
    stats: EpisodeStats,
):
    """``num_steps`` steps of every copy of the vector ``env`` under the policy ``params``.

    Returns ``(env_state, obs, trajectory, stats)``: the env after the rollout, the last
    observation, a :class:`Transition` with leaves ``[num_steps, N, ...]``, and the episode
    statistics with the episodes that finished appended.
    """

    def body(carry, key):
        env_state, obs = carry
        act_key, env_key = jax.random.split(key)
        out, value = apply(params, obs)
        action = policy.sample(act_key, out)
        log_prob = policy.log_prob(out, action)
        next_obs, env_state, reward, terminated, _, info = env.step(
            env_key, env_state, policy.to_env(action)
        )
        t = Transition(
            obs,
            action,
            log_prob,
            value,
            reward,
            terminated,
            info["done"],
            info["final_observation"],
        )
        return (env_state, next_obs), (t, info["episode_return"], info["episode_length"])

    keys = jax.random.split(key, num_steps)
    (env_state, obs), (traj, returns, lengths) = jax.lax.scan(body, (env_state, obs), keys)
    # One update for the whole rollout: [T, N] row-major is the order the episodes ended in.
    stats = episode_stats_update(stats, traj.done, returns, lengths)
    return env_state, obs, traj, stats


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    done: jax.Array,
    *,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    r"""Generalized advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation"), as a reverse ``lax.scan`` over time:

    .. math:: \delta_t = r_t + \gamma (1 - \mathrm{term}_t) V(s'_t) - V(s_t), \qquad
              A_t = \delta_t + \gamma\lambda (1 - \mathrm{done}_t) A_{t+1},

    where :math:`s'_t` is the true next state (the final observation when the episode ends):
    a truncated episode bootstraps from it, a terminated one does not, and no advantage flows
    across an episode boundary (so the reset never leaks into the previous episode). The last
    step bootstraps from ``next_values[-1]``. ``lam=1`` gives n-step returns (A2C).

    Args: every array is ``[T, ...]`` (time first).

    Returns:
      ``(advantages, returns)`` with ``returns = advantages + values`` (the critic's target).
    """
    not_term = 1.0 - terminated.astype(jnp.float32)
    not_done = 1.0 - done.astype(jnp.float32)
    deltas = rewards + gamma * not_term * next_values - values

    def body(next_adv, x):
        delta, cont = x
        adv = delta + gamma * lam * cont * next_adv
        return adv, adv

    _, adv = jax.lax.scan(body, jnp.zeros_like(deltas[0]), (deltas, not_done), reverse=True)
    return adv, adv + values


def advantages_of(traj: Transition, apply: Callable, params: Any, *, gamma: float, lam: float):
    """GAE of a trajectory: ``V(next_obs)`` from the critic ``params`` (one batched pass)."""
    T, N = traj.reward.shape
    flat = traj.next_obs.reshape(T * N, *traj.next_obs.shape[2:])
    next_values = apply(params, flat)[1].reshape(T, N)
    return gae(
        traj.reward, traj.value, next_values, traj.terminated, traj.done, gamma=gamma, lam=lam
    )
