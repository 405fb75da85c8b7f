"""Deep deterministic policy gradient (DDPG) over the worker axis: a replay buffer on the device
in each worker's state, target networks with Polyak averaging, Gaussian exploration noise.

Distribution (chosen for SPMD): every worker is an actor with its own ``N`` env copies and its
own replay-buffer *shard*; the learner is the all-reduce of the workers' gradients, each worker
contributing the gradient of a minibatch drawn from its own shard. All workers hold the same
actor, critic and targets, so this is ONE learner whose minibatch of ``W · B`` transitions is
drawn stratified (``B`` per shard) from the union of the shards — Gorila-style actors feeding
one learner (Nair et al. 2015) without a central buffer to ship transitions to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import psum
from jdo.algorithms.base import Algorithm
from jdo.comm.collectives import mean
from jdo.comm.control import scan
from jdo.rl.envs import Env, check_vector_env
from jdo.rl.rollout import (
    EpisodeStats,
    episode_stats_init,
    episode_stats_metrics,
    episode_stats_update,
)

# ----------------------------------------------------------------------------------------------
# Replay buffer (a pytree in the state: checkpointed with it)
# ----------------------------------------------------------------------------------------------


class ReplayBuffer(NamedTuple):
    """A ring buffer of ``capacity`` transitions; slot ``i`` is valid for ``i < size``."""

    obs: jax.Array  # f32[C, *obs]
    action: jax.Array  # f32[C, a]
    reward: jax.Array  # f32[C]
    next_obs: jax.Array  # f32[C, *obs]: the true next observation (final one at an episode end)
    terminated: jax.Array  # bool[C]: true terminal: no bootstrap (never set by a time limit)
    size: jax.Array  # int32: filled slots, <= C
    insert: jax.Array  # int32: the next slot to write


def replay_init(capacity: int, obs_shape: Sequence[int], action_size: int) -> ReplayBuffer:
    """An empty buffer of ``capacity`` transitions."""
    c, obs_shape = checks.positive_int("capacity", capacity), tuple(obs_shape)
    zeros = lambda *s: jnp.zeros(s, jnp.float32)
    return ReplayBuffer(
        zeros(c, *obs_shape),
        zeros(c, action_size),
        zeros(c),
        zeros(c, *obs_shape),
        jnp.zeros((c,), bool),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def replay_add(buf: ReplayBuffer, obs, action, reward, next_obs, terminated) -> ReplayBuffer:
    """Writes a batch of ``B <= capacity`` transitions (leading axis) at slots
    ``insert, insert + 1, ...`` modulo the capacity, overwriting the oldest when full."""
    capacity, b = buf.reward.shape[0], reward.shape[0]
    if b > capacity:  # shapes are static: this is a trace-time check
        raise checks.InvalidArgument(
            "reward",
            f"holds a batch of {b} transitions, more than the buffer's capacity {capacity}",
        )
    idx = (buf.insert + jnp.arange(b)) % capacity
    return ReplayBuffer(
        buf.obs.at[idx].set(obs.astype(jnp.float32)),
        buf.action.at[idx].set(action.astype(jnp.float32)),
        buf.reward.at[idx].set(reward.astype(jnp.float32)),
        buf.next_obs.at[idx].set(next_obs.astype(jnp.float32)),
        buf.terminated.at[idx].set(terminated.astype(bool)),
        jnp.minimum(buf.size + b, capacity).astype(jnp.int32),
        ((buf.insert + b) % capacity).astype(jnp.int32),
    )


def replay_sample(buf: ReplayBuffer, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """``batch_size`` transitions drawn uniformly with replacement from the filled slots
    (from slot 0 while the buffer is empty; callers do not learn before it has data)."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1))
    return {
        "obs": buf.obs[idx],
        "action": buf.action[idx],
        "reward": buf.reward[idx],
        "next_obs": buf.next_obs[idx],
        "terminated": buf.terminated[idx],
    }


# ----------------------------------------------------------------------------------------------
# The pure pieces of the update (tested against numpy)
# ----------------------------------------------------------------------------------------------


def polyak(target, online, tau: float):
    r"""Soft target update :math:`\theta' \leftarrow \tau\theta + (1 - \tau)\theta'`."""
    return jax.tree.map(lambda t, o: tau * o + (1.0 - tau) * t, target, online)


def critic_target(apply, target_params, batch, gamma: float) -> jax.Array:
    r""":math:`y = r + \gamma (1 - \mathrm{term})\, Q'(s', \mu'(s'))` with the target nets
    (``apply(target_params, s') = (\mu'(s'), Q'(s', \mu'(s')))``); a time-limit truncation is
    not a termination, so it bootstraps."""
    _, q_next = apply(target_params, batch["next_obs"])
    not_term = 1.0 - batch["terminated"].astype(jnp.float32)
    return batch["reward"] + gamma * not_term * q_next


# ----------------------------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------------------------


class DDPGState(NamedTuple):
    """One worker's state: learner (online + target nets, two optimizer states), its replay
    buffer shard, its environments and episode statistics."""

    params: Any  # {"actor": ..., "critic": ...}
    target: Any  # same structure: the Polyak-averaged target networks
    opt_state: Any  # (actor optimizer state, critic optimizer state)
    buffer: ReplayBuffer
    env_state: Any
    obs: jax.Array  # f32[N, obs]
    episodes: EpisodeStats
    step: jax.Array  # int32: algorithm steps so far


class _Config(NamedTuple):
    """:func:`ddpg`'s arguments (``actor_optimizer`` filled in)."""

    env: Env
    apply: Callable
    optimizer: optax.GradientTransformation
    actor_optimizer: optax.GradientTransformation
    buffer_size: int
    batch_size: int
    num_steps: int
    updates_per_step: int
    learning_starts: int
    gamma: float
    tau: float
    exploration_noise: float
    axis_name: str


def _check(c: _Config) -> None:
    """:func:`ddpg`'s argument checks (each names its parameter)."""
    env = c.env
    check_vector_env(env)
    if env.action_space.discrete:
        raise checks.InvalidArgument(
            "env", f"must have continuous actions; {env.name} has discrete ones"
        )
    checks.optimizer("optimizer", c.optimizer)
    checks.optimizer("actor_optimizer", c.actor_optimizer)
    for name in ("buffer_size", "batch_size", "num_steps", "updates_per_step"):
        checks.positive_int(name, getattr(c, name))
    checks.non_negative_int("learning_starts", c.learning_starts)
    if c.learning_starts > c.buffer_size:
        raise checks.InvalidArgument(
            "learning_starts",
            f"must be <= buffer_size ({c.buffer_size}), got {c.learning_starts}",
        )
    if c.num_steps * env.num_envs > c.buffer_size:
        raise checks.InvalidArgument(
            "buffer_size",
            f"must hold one step's num_steps · num_envs "
            f"= {c.num_steps * env.num_envs} transitions, got "
            f"{c.buffer_size}",
        )
    checks.probability("gamma", c.gamma)
    checks.number("tau", c.tau, low=0, high=1, low_open=True)
    checks.non_negative("exploration_noise", c.exploration_noise)


def _action_bounds(c: _Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(low, high, noise_scale)``: the action bounds and the exploration noise's σ."""
    space = c.env.action_space
    low = jnp.asarray(space.low, jnp.float32)
    high = jnp.asarray(space.high, jnp.float32)
    return low, high, c.exploration_noise * (high - low) / 2


def _init(c: _Config, params, key) -> DDPGState:
    obs, env_state = c.env.reset(key)
    opt_state = (c.actor_optimizer.init(params["actor"]), c.optimizer.init(params["critic"]))
    buffer = replay_init(c.buffer_size, c.env.observation_shape, c.env.action_space.size)
    target = jax.tree.map(jnp.array, params)  # a copy, not an alias (donation)
    step = jnp.zeros((), jnp.int32)
    return DDPGState(params, target, opt_state, buffer, env_state, obs, episode_stats_init(), step)


def _act(apply, bounds, params, obs, key, explore_randomly):
    low, high, noise_scale = bounds
    noise_key, uniform_key = jax.random.split(key)
    mu, _ = apply(params, obs)
    noisy = mu + noise_scale * jax.random.normal(noise_key, mu.shape, mu.dtype)
    uniform = jax.random.uniform(uniform_key, mu.shape, mu.dtype, low, high)
    return jnp.clip(jnp.where(explore_randomly, uniform, noisy), low, high)


def _critic_loss(apply, gamma, critic_params, params, target, batch):
    y = jax.lax.stop_gradient(critic_target(apply, target, batch, gamma))
    q = apply({**params, "critic": critic_params}, (batch["obs"], batch["action"]))
    return jnp.mean(jnp.square(q - y)), jnp.mean(q)


def _actor_loss(apply, actor_params, critic_params, obs):
    return -jnp.mean(apply({"actor": actor_params, "critic": critic_params}, obs)[1])


def _update(c: _Config, buffer, carry, key):
    """One gradient update (step 2 of :func:`ddpg`) on a minibatch from ``buffer``."""
    params, target, (actor_opt, critic_opt) = carry
    batch = replay_sample(buffer, key, c.batch_size)
    # 2a. critic
    (q_loss, q_mean), g_q = jax.value_and_grad(_critic_loss, argnums=2, has_aux=True)(
        c.apply, c.gamma, params["critic"], params, target, batch
    )
    g_q = mean(g_q, c.axis_name)
    u_q, critic_opt = c.optimizer.update(g_q, critic_opt, params["critic"])
    critic = optax.apply_updates(params["critic"], u_q)
    # 2b. actor, through the updated critic
    pi_loss, g_mu = jax.value_and_grad(_actor_loss, argnums=1)(
        c.apply, params["actor"], critic, batch["obs"]
    )
    g_mu = mean(g_mu, c.axis_name)
    u_mu, actor_opt = c.actor_optimizer.update(g_mu, actor_opt, params["actor"])
    params = {"actor": optax.apply_updates(params["actor"], u_mu), "critic": critic}
    # 2c. targets
    target = polyak(target, params, c.tau)
    metrics = {"loss": q_loss, "actor_loss": pi_loss, "q_mean": q_mean}
    return (params, target, (actor_opt, critic_opt)), metrics


def _env_step(c: _Config, bounds, params, carry, key):
    """One env step of every env copy, stored in the buffer (step 1 of :func:`ddpg`)."""
    env_state, obs, buffer, episodes = carry
    a_key, e_key = jax.random.split(key)
    action = _act(c.apply, bounds, params, obs, a_key, buffer.size < c.learning_starts)
    next_obs, env_state, reward, terminated, _, info = c.env.step(e_key, env_state, action)
    buffer = replay_add(buffer, obs, action, reward, info["final_observation"], terminated)
    episodes = episode_stats_update(
        episodes, info["done"], info["episode_return"], info["episode_length"]
    )
    return (env_state, next_obs, buffer, episodes), None


def _step(c: _Config, bounds, state: DDPGState, key):
    act_key, learn_key = jax.random.split(key)

    # 1. act and store
    env_step = functools.partial(_env_step, c, bounds, state.params)
    carry = (state.env_state, state.obs, state.buffer, state.episodes)
    (env_state, obs, buffer, episodes), _ = jax.lax.scan(
        env_step, carry, jax.random.split(act_key, c.num_steps)
    )

    # 2. learn (the same on every worker: the shards fill at the same rate)
    learner = (state.params, state.target, state.opt_state)
    new, metrics = scan(
        lambda carry, k: _update(c, buffer, carry, k),
        learner,
        jax.random.split(learn_key, c.updates_per_step),
    )
    ready = buffer.size >= c.learning_starts
    params, target, opt_state = jax.tree.map(lambda n, o: jnp.where(ready, n, o), new, learner)
    metrics = {k: jnp.where(ready, jnp.mean(v), 0.0) for k, v in metrics.items()}
    new_step = state.step + 1
    per_step = c.num_steps * c.env.num_envs * psum(1, c.axis_name)  # static
    metrics = {
        **metrics,
        **episode_stats_metrics(episodes),
        "env_steps": new_step.astype(jnp.float32) * per_step,
    }
    state = DDPGState(params, target, opt_state, buffer, env_state, obs, episodes, new_step)
    return state, metrics


def ddpg(
    env: Env,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    actor_optimizer: optax.GradientTransformation | None = None,
    buffer_size: int = 50_000,
    batch_size: int = 64,
    num_steps: int = 1,
    updates_per_step: int = 1,
    learning_starts: int = 256,
    gamma: float = 0.99,
    tau: float = 0.005,
    exploration_noise: float = 0.1,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Deep deterministic policy gradient (Lillicrap et al. 2016, "Continuous control with deep
    reinforcement learning"), one worker's step, following the paper's Algorithm 1:

    1. act ``num_steps`` times in each of the worker's ``N`` env copies with
       :math:`a = \mathrm{clip}(\mu(s) + \epsilon,\ \ell, h)`,
       :math:`\epsilon \sim \mathcal N(0, (\sigma (h-\ell)/2)^2)` (uniform random actions until
       the worker's shard holds ``learning_starts`` transitions), and store
       :math:`(s, a, r, s', \mathrm{term})` in the worker's replay shard (:math:`s'` is the true
       final observation when an episode ends);
    2. ``updates_per_step`` times: sample ``batch_size`` transitions from the shard;

       - critic: :math:`y = r + \gamma(1-\mathrm{term})Q'(s', \mu'(s'))`,
         :math:`g_Q = \nabla_\phi \frac1B\sum (Q_\phi(s,a) - y)^2`, all-reduced (mean over the
         workers), :math:`\phi \leftarrow \phi + \mathrm{opt}(g_Q)`;
       - actor (with the updated critic): :math:`g_\mu = \nabla_\theta -\frac1B\sum
         Q_\phi(s, \mu_\theta(s))`, all-reduced, :math:`\theta \leftarrow \theta +
         \mathrm{opt}_\mu(g_\mu)`;
       - targets: :math:`\theta' \leftarrow \tau\theta + (1-\tau)\theta'`,
         :math:`\phi' \leftarrow \tau\phi + (1-\tau)\phi'`.

    The all-reduce makes W workers one learner on a minibatch of ``W · batch_size`` drawn
    ``batch_size`` per shard (see the module docstring); all workers' params stay identical.
    Exploration uses Gaussian noise, which Fujimoto et al. 2018 (TD3) found as good as the
    paper's Ornstein-Uhlenbeck process.

    Args:
      env: the worker's vector env (``jdo.rl.make_vec_env``) with continuous actions.
      apply: ``apply(params, obs) -> (action, Q(obs, action))`` with the action inside the
        bounds, and ``apply(params, (obs, action)) -> q`` (:class:`DDPGNetworks`, through
        ``jdo.models.functional``); ``params = {"actor": ..., "critic": ...}``.
      optimizer: the critic's optax optimizer (and the actor's unless ``actor_optimizer``).
      actor_optimizer: the actor's optimizer; None: ``optimizer``.
      buffer_size: each worker's replay shard capacity (>= ``num_steps · N``).
      batch_size: transitions per update per worker.
      num_steps: env steps per env copy per algorithm step.
      updates_per_step: gradient updates per algorithm step.
      learning_starts: transitions in a shard before learning and the policy start.
      gamma: discount; tau: Polyak coefficient in (0, 1]; exploration_noise: σ as a fraction
        of the half-range of the actions.
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` with :class:`DDPGState` (``init(params, key)`` with
      ``params = {"actor", "critic"}``); metrics ``loss`` (critic), ``actor_loss``, ``q_mean``,
      ``episode_return``, ``episode_length``, ``episodes``, ``env_steps`` (all workers).
    """
    c = _Config(
        env,
        apply,
        optimizer,
        optimizer if actor_optimizer is None else actor_optimizer,
        buffer_size,
        batch_size,
        num_steps,
        updates_per_step,
        learning_starts,
        gamma,
        tau,
        exploration_noise,
        axis_name,
    )
    _check(c)
    bounds = _action_bounds(c)

    def init(params, key):
        return _init(c, params, key)

    def step(state, batch, key):
        del batch  # off-policy RL makes its own data
        return _step(c, bounds, state, key)

    return Algorithm(init, step)
