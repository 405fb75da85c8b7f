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

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdo._axis import WORKERS
from jdo.algorithms.base import Algorithm
from jdo.models import functional
from jdo.rl.envs import ActionSpace, Env
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
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
    c, obs_shape = int(capacity), tuple(obs_shape)
    zeros = lambda *s: jnp.zeros(s, jnp.float32)
    return ReplayBuffer(
        zeros(c, *obs_shape), zeros(c, action_size), zeros(c), zeros(c, *obs_shape),
        jnp.zeros((c,), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
    )  # fmt: skip


def replay_add(buf: ReplayBuffer, obs, action, reward, next_obs, terminated) -> ReplayBuffer:
    """Writes a batch of ``B <= capacity`` transitions (leading axis) at slots
    ``insert, insert + 1, ...`` modulo the capacity, overwriting the oldest when full."""
    capacity, b = buf.reward.shape[0], reward.shape[0]
    if b > capacity:  # shapes are static: this is a trace-time check
        raise ValueError(f"replay_add: a batch of {b} transitions exceeds capacity {capacity}")
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
# Networks
# ----------------------------------------------------------------------------------------------


class DeterministicActor(nnx.Module):
    r""":math:`\mu(s) = \ell + (\tanh(f(s)) + 1)(h - \ell)/2`: an MLP squashed into the action
    bounds :math:`[\ell, h]`."""

    def __init__(self, obs_size, low, high, *, hidden=(256, 256), rngs: nnx.Rngs):
        sizes = [obs_size, *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], len(low), rngs=rngs)
        # Static Python floats: neither params nor state, so never trained or checkpointed.
        self.low, self.high = tuple(map(float, low)), tuple(map(float, high))

    def __call__(self, obs):  # obs: f32[B, obs]
        x = obs.reshape(obs.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return low + (jnp.tanh(self.head(x)) + 1.0) * (high - low) / 2


class QCritic(nnx.Module):
    """:math:`Q(s, a)`: an MLP on the concatenated observation and action."""

    def __init__(self, obs_size, action_size, *, hidden=(256, 256), rngs: nnx.Rngs):
        sizes = [obs_size + action_size, *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], 1, rngs=rngs)

    def __call__(self, obs_action):  # f32[B, obs + action]
        x = obs_action
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)[:, 0]


class DDPGNetworks(nnx.Module):
    r"""DDPG's deterministic actor and Q critic in one module, sized for an environment (the
    ``model`` group's signature, as :class:`~jdo.rl.networks.ActorCritic`).

    ``model(obs) -> (action, q)`` with :math:`a = \mu(s)` and :math:`q = Q(s, \mu(s))` (the
    policy output and its value, like an actor-critic); ``model((obs, action)) -> q`` evaluates
    the critic at given actions. Through ``jdo.models.functional`` the params are
    ``{"actor": ..., "critic": ...}``.
    """

    def __init__(self, obs_size: int, action_space: ActionSpace, *, hidden=(256, 256),
                 rngs: nnx.Rngs):  # fmt: skip
        if action_space.discrete:
            raise ValueError("DDPGNetworks: DDPG needs continuous actions, got a discrete space")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"DDPGNetworks: hidden must be positive sizes, got {list(hidden)}")
        hidden = tuple(int(h) for h in hidden)
        self.actor = DeterministicActor(
            obs_size, action_space.low, action_space.high, hidden=hidden, rngs=rngs
        )
        self.critic = QCritic(obs_size, action_space.size, hidden=hidden, rngs=rngs)

    def __call__(self, x):
        if isinstance(x, tuple):  # (obs, action) -> Q(obs, action)
            obs, action = x
            return self.critic(jnp.concatenate([obs.reshape(obs.shape[0], -1), action], -1))
        action = self.actor(x)
        return action, self.critic(jnp.concatenate([x.reshape(x.shape[0], -1), action], -1))


def make_ddpg_networks(env: Env, hidden: Sequence[int] = (256, 256), seed: int = 0):
    """``(apply, params)`` of :class:`DDPGNetworks` for ``env`` (continuous actions):
    ``apply(params, obs) -> (action, q)``, ``apply(params, (obs, action)) -> q``."""
    if env.action_space.discrete:
        raise ValueError(f"DDPG needs continuous actions; {env.name} has discrete ones")
    return functional(
        DDPGNetworks(env.observation_size, env.action_space, hidden=hidden, rngs=nnx.Rngs(seed))
    )


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


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"ddpg: {name} must be a positive integer, got {value!r}")


def ddpg(
    env: Env,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    actor_optimizer: optax.GradientTransformation | None = None,
    buffer_size: int = 100_000,
    batch_size: int = 64,
    num_steps: int = 1,
    updates_per_step: int = 1,
    learning_starts: int = 1_000,
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
    if not isinstance(env, Env) or env.num_envs is None:
        raise ValueError(f"ddpg: env must be a vector jdo.rl.Env (jdo.rl.make_vec_env), "
                         f"got {env!r}")  # fmt: skip
    if env.action_space.discrete:
        raise ValueError(f"ddpg: env must have continuous actions; {env.name} is discrete")
    actor_optimizer = optimizer if actor_optimizer is None else actor_optimizer
    for name, opt in (("optimizer", optimizer), ("actor_optimizer", actor_optimizer)):
        if not isinstance(opt, optax.GradientTransformation):
            raise ValueError(f"ddpg: {name} must be an optax.GradientTransformation, got {opt!r}")
    for name, value in (
        ("buffer_size", buffer_size),
        ("batch_size", batch_size),
        ("num_steps", num_steps),
        ("updates_per_step", updates_per_step),
    ):
        _positive_int(name, value)
    if isinstance(learning_starts, bool) or not isinstance(learning_starts, int | np.integer):
        raise ValueError(f"ddpg: learning_starts must be an integer, got {learning_starts!r}")
    if not 0 <= learning_starts <= buffer_size:
        raise ValueError(f"ddpg: learning_starts must be in [0, buffer_size={buffer_size}], "
                         f"got {learning_starts}")  # fmt: skip
    if num_steps * env.num_envs > buffer_size:
        per_step = num_steps * env.num_envs
        raise ValueError(f"ddpg: buffer_size ({buffer_size}) must hold one step's "
                         f"num_steps · num_envs = {per_step} transitions")  # fmt: skip
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"ddpg: gamma must be in [0, 1], got {gamma!r}")
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"ddpg: tau must be in (0, 1], got {tau!r}")
    if not exploration_noise >= 0.0:
        raise ValueError(f"ddpg: exploration_noise must be >= 0, got {exploration_noise!r}")

    space = env.action_space
    low = jnp.asarray(space.low, jnp.float32)
    high = jnp.asarray(space.high, jnp.float32)
    noise_scale = exploration_noise * (high - low) / 2

    def init(params, key):
        obs, env_state = env.reset(key)
        opt_state = (actor_optimizer.init(params["actor"]), optimizer.init(params["critic"]))
        buffer = replay_init(buffer_size, env.observation_shape, space.size)
        target = jax.tree.map(jnp.array, params)  # a copy, not an alias (donation)
        return DDPGState(params, target, opt_state, buffer, env_state, obs, episode_stats_init(),
                         jnp.zeros((), jnp.int32))  # fmt: skip

    def act(params, obs, key, explore_randomly):
        noise_key, uniform_key = jax.random.split(key)
        mu, _ = apply(params, obs)
        noisy = mu + noise_scale * jax.random.normal(noise_key, mu.shape, mu.dtype)
        uniform = jax.random.uniform(uniform_key, mu.shape, mu.dtype, low, high)
        return jnp.clip(jnp.where(explore_randomly, uniform, noisy), low, high)

    def critic_loss(critic_params, params, target, batch):
        y = jax.lax.stop_gradient(critic_target(apply, target, batch, gamma))
        q = apply({**params, "critic": critic_params}, (batch["obs"], batch["action"]))
        return jnp.mean(jnp.square(q - y)), jnp.mean(q)

    def actor_loss(actor_params, critic_params, obs):
        return -jnp.mean(apply({"actor": actor_params, "critic": critic_params}, obs)[1])

    def update(buffer, carry, key):
        params, target, (actor_opt, critic_opt) = carry
        batch = replay_sample(buffer, key, batch_size)
        # 2a. critic
        (q_loss, q_mean), g_q = jax.value_and_grad(critic_loss, has_aux=True)(
            params["critic"], params, target, batch
        )
        g_q = jax.lax.pmean(g_q, axis_name)
        u_q, critic_opt = optimizer.update(g_q, critic_opt, params["critic"])
        critic = optax.apply_updates(params["critic"], u_q)
        # 2b. actor, through the updated critic
        pi_loss, g_mu = jax.value_and_grad(actor_loss)(params["actor"], critic, batch["obs"])
        g_mu = jax.lax.pmean(g_mu, axis_name)
        u_mu, actor_opt = actor_optimizer.update(g_mu, actor_opt, params["actor"])
        params = {"actor": optax.apply_updates(params["actor"], u_mu), "critic": critic}
        # 2c. targets
        target = polyak(target, params, tau)
        metrics = {"loss": q_loss, "actor_loss": pi_loss, "q_mean": q_mean}
        return (params, target, (actor_opt, critic_opt)), metrics

    def step(state, batch, key):
        del batch  # off-policy RL makes its own data
        act_key, learn_key = jax.random.split(key)

        # 1. act and store
        def env_step(carry, key):
            env_state, obs, buffer, episodes = carry
            a_key, e_key = jax.random.split(key)
            action = act(state.params, obs, a_key, buffer.size < learning_starts)
            next_obs, env_state, reward, terminated, _, info = env.step(e_key, env_state, action)
            buffer = replay_add(buffer, obs, action, reward, info["final_observation"],
                                terminated)  # fmt: skip
            episodes = episode_stats_update(
                episodes, info["done"], info["episode_return"], info["episode_length"]
            )
            return (env_state, next_obs, buffer, episodes), None

        carry = (state.env_state, state.obs, state.buffer, state.episodes)
        (env_state, obs, buffer, episodes), _ = jax.lax.scan(
            env_step, carry, jax.random.split(act_key, num_steps)
        )

        # 2. learn (the same on every worker: the shards fill at the same rate)
        learner = (state.params, state.target, state.opt_state)
        new, metrics = jax.lax.scan(
            lambda c, k: update(buffer, c, k),
            learner,
            jax.random.split(learn_key, updates_per_step),
        )
        ready = buffer.size >= learning_starts
        params, target, opt_state = jax.tree.map(lambda n, o: jnp.where(ready, n, o), new, learner)
        metrics = {k: jnp.where(ready, jnp.mean(v), 0.0) for k, v in metrics.items()}
        new_step = state.step + 1
        per_step = num_steps * env.num_envs * jax.lax.psum(1, axis_name)  # static
        metrics = {
            **metrics,
            **episode_stats_metrics(episodes),
            "env_steps": new_step.astype(jnp.float32) * per_step,
        }
        state = DDPGState(params, target, opt_state, buffer, env_state, obs, episodes, new_step)
        return state, metrics

    return Algorithm(init, step)
