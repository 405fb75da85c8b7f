"""JAX-native environments (gymnax) stepped inside ``jit``, with auto-reset, episode statistics
and observation/reward normalisation whose running statistics live in the environment state
(so a checkpoint of the algorithm's state holds them).

An :class:`Env` is a pair of pure functions::

    obs, state = env.reset(key)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action)

``step`` resets automatically when an episode ends: the returned ``obs`` is then the first
observation of the next episode, while ``info["final_observation"]`` is the true last
observation of the finished one. The transition ``(obs_t, a_t, r_t, final_observation)`` is real;
there is no extra "reset transition" (unlike gymnasium's NEXT_STEP auto-reset), so a learner only
has to (1) cut returns/advantages at ``terminated | truncated`` and (2) bootstrap from
``V(final_observation)`` unless ``terminated``. As gymnasium's ``TimeLimit``, ``truncated`` is
True at the time limit even where the MDP terminates on that very step (both are then True).

``info`` always holds ``final_observation``, ``done`` (= terminated | truncated),
``episode_return`` and ``episode_length`` (of the episode that ends at this step, in raw,
un-normalised rewards; meaningful where ``done``).

``vectorize(env, n)`` steps ``n`` copies with ``vmap``; the normalisation wrappers act on such a
vector env and keep one set of running statistics shared by its ``n`` copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from jdo import checks

ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCar-v0")


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """``kind="discrete"``: actions are int32 scalars in ``[0, n)``; ``kind="continuous"``:
    float32 arrays of ``shape`` in ``[low, high]``."""

    kind: str
    n: int | None = None
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def size(self) -> int:
        """Number of policy outputs: ``n`` logits or the action dimension."""
        return self.n if self.discrete else int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class Env:
    """A pure, jittable environment (see the module docstring for the step contract).

    Attributes:
      name: the environment id.
      reset: ``reset(key) -> (obs, state)``.
      step: ``step(key, state, action) -> (obs, state, reward, terminated, truncated, info)``,
        auto-resetting.
      observation_shape: one observation's shape.
      action_space: an :class:`ActionSpace`.
      num_envs: ``None`` for a single environment; ``n`` for ``vectorize(env, n)`` (every
        output then has a leading ``[n]`` axis, ``key`` stays one key).
      max_episode_steps: the time limit (an episode is truncated after this many steps).
      observe: ``observe(state, raw_obs) -> obs``: what the policy sees for a raw observation
        given the env's state, with any normaliser's statistics frozen (evaluation on fresh
        episodes); the identity unless wrapped by :func:`normalize_observation`.
    """

    name: str
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]
    step: Callable[..., tuple]
    observation_shape: tuple[int, ...]
    action_space: ActionSpace
    num_envs: int | None = None
    max_episode_steps: int | None = None
    observe: Callable[[Any, jax.Array], jax.Array] = lambda state, obs: obs

    @property
    def observation_size(self) -> int:
        return int(np.prod(self.observation_shape))


class EnvState(NamedTuple):
    """A single environment's state: the simulator's, and the running episode statistics."""

    inner: Any  # the gymnax state
    episode_return: jax.Array  # f32: raw reward summed over the current episode
    episode_length: jax.Array  # int32


def _strong(tree):
    """Strongly typed arrays (gymnax keeps Python ints such as ``time=0`` in its states, whose
    weak types would differ between a ``lax.scan``'s input and output carry)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), tree)


def as_action_space(space) -> ActionSpace:
    """The :class:`ActionSpace` of a gymnax or gymnasium ``Discrete`` or ``Box`` space."""
    if isinstance(space, spaces.Discrete | gymnasium.spaces.Discrete):
        return ActionSpace("discrete", n=int(space.n))
    if isinstance(space, spaces.Box | gymnasium.spaces.Box):
        shape = tuple(int(s) for s in space.shape)
        bound = lambda b: tuple(float(v) for v in np.broadcast_to(np.asarray(b), shape).ravel())
        return ActionSpace("continuous", shape=shape, low=bound(space.low), high=bound(space.high))
    raise checks.InvalidArgument("space", f"must be a Discrete or Box space, got {space!r}")


def check_vector_env(env: Any, name: str = "env") -> Env:
    """``env`` if it is a vector :class:`Env` (:func:`make_vec_env`); else the argument error."""
    if not isinstance(env, Env):
        raise checks.WrongType(
            name, f"must be a vector jdo.rl.Env (jdo.rl.make_vec_env), got {env!r}"
        )
    if env.num_envs is None:
        raise checks.InvalidArgument(
            name, f"must be a vector env (jdo.rl.make_vec_env), got the single env {env.name}"
        )
    return env


def make_env(name: str, **params) -> Env:
    """A single JAX-native environment with auto-reset and episode statistics.

    Args:
      name: one of ``CartPole-v1``, ``Pendulum-v1``, ``Acrobot-v1``, ``MountainCar-v0``
        (gymnax's re-implementations of the gymnasium classic-control tasks).
      **params: overrides of the gymnax ``EnvParams`` fields, e.g.
        ``max_steps_in_episode=200``.

    Returns:
      An :class:`Env` (``num_envs=None``); ``vectorize`` it for a batch of copies.
    """
    checks.one_of("name", name, ENVS)
    gym_env, env_params = gymnax.make(name)
    fields = {f.name for f in dataclasses.fields(env_params)}
    for key in sorted(params):
        if key not in fields:
            raise checks.InvalidArgument(
                key, f"is not a parameter of {name}; allowed: {', '.join(sorted(fields))}"
            )
    checks.positive_int("max_steps_in_episode", params.get("max_steps_in_episode", 1))
    env_params = env_params.replace(**params)
    space = as_action_space(gym_env.action_space(env_params))

    def reset(key):
        obs, inner = gym_env.reset(key, env_params)
        zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return obs.astype(jnp.float32), _strong(EnvState(inner, zero_f, zero_i))

    def step(key, state, action):
        if space.discrete:
            action = jnp.asarray(action, jnp.int32)
        else:
            action = jnp.asarray(action, jnp.float32).reshape(space.shape)
        obs, inner, reward, terminated, truncated, info = gym_env.step(
            key, state.inner, action, env_params
        )
        reward = jnp.asarray(reward, jnp.float32).reshape(())
        terminated = jnp.asarray(terminated, bool).reshape(())
        # gymnasium's TimeLimit: truncated at the limit whether or not the MDP also terminated
        # there (a pole falling at step 500 is both); a learner bootstraps only if not terminated.
        truncated = jnp.asarray(truncated, bool).reshape(())
        done = terminated | truncated
        ep_return = state.episode_return + reward
        ep_length = state.episode_length + 1
        new_state = EnvState(
            inner,
            jnp.where(done, 0.0, ep_return).astype(jnp.float32),
            jnp.where(done, 0, ep_length).astype(jnp.int32),
        )
        info = {
            "final_observation": info["final_observation"].astype(jnp.float32),
            "done": done,
            "episode_return": ep_return,
            "episode_length": ep_length,
        }
        return obs.astype(jnp.float32), _strong(new_state), reward, terminated, truncated, info

    obs_shape = tuple(int(s) for s in gym_env.observation_space(env_params).shape)
    return Env(name, reset, step, obs_shape, space, None, int(env_params.max_steps_in_episode))


def vectorize(env: Env, num_envs: int) -> Env:
    """``num_envs`` independent copies of ``env`` stepped with ``vmap``: ``reset(key)`` and
    ``step(key, state, actions)`` take ONE key (split per copy) and give ``[num_envs, ...]``."""
    if env.num_envs is not None:
        raise checks.InvalidArgument("env", f"is already vectorized ({env.num_envs} envs)")
    n = checks.positive_int("num_envs", num_envs)

    def reset(key):
        return jax.vmap(env.reset)(jax.random.split(key, n))

    def step(key, state, action):
        return jax.vmap(env.step)(jax.random.split(key, n), state, action)

    return dataclasses.replace(env, reset=reset, step=step, num_envs=n)


# ----------------------------------------------------------------------------------------------
# Normalisation wrappers (on a vector env; statistics shared by its copies, kept in the state)
# ----------------------------------------------------------------------------------------------


class RunningMoments(NamedTuple):
    """Mean and (population) variance of everything seen so far, and how many values."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array  # f32 (a float so that huge counts do not overflow)


def moments_init(shape=()) -> RunningMoments:
    return RunningMoments(
        jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.zeros((), jnp.float32)
    )


def moments_update(m: RunningMoments, batch: jax.Array) -> RunningMoments:
    r"""Merges a batch (leading axis) into the moments (Chan et al. 1979's parallel update):

    .. math:: \delta = \bar b - \mu,\; n' = n + k,\; \mu' = \mu + \delta k / n',\;
              \sigma'^2 = (n\sigma^2 + k s^2 + \delta^2 n k / n') / n'.

    The initial ``var=1, count=0`` state is forgotten at the first batch.
    """
    k = jnp.asarray(batch.shape[0], jnp.float32)
    b_mean, b_var = jnp.mean(batch, axis=0), jnp.var(batch, axis=0)
    total = m.count + k
    delta = b_mean - m.mean
    mean = m.mean + delta * k / total
    var = (m.var * m.count + b_var * k + jnp.square(delta) * m.count * k / total) / total
    return RunningMoments(mean, var, total)


class NormalizeObservationState(NamedTuple):
    inner: Any
    moments: RunningMoments


def normalize_observation(env: Env, *, clip: float = 10.0, epsilon: float = 1e-8) -> Env:
    r"""Observations standardised by running moments of all observations seen so far:

    .. math:: o \mapsto \mathrm{clip}\big((o - \mu) / \sqrt{\sigma^2 + \epsilon}, -c, c\big),

    with :math:`\mu, \sigma^2` updated with each batch of new observations *before* they are
    normalised (as gymnasium's ``NormalizeObservation``). ``info["final_observation"]`` is
    normalised with the same statistics, so bootstrapping sees what the policy sees.
    """
    check_vector_env(env)
    checks.positive("clip", clip)
    checks.positive("epsilon", epsilon)

    def norm(obs, m):
        return jnp.clip((obs - m.mean) / jnp.sqrt(m.var + epsilon), -clip, clip)

    def reset(key):
        obs, inner = env.reset(key)
        m = moments_update(moments_init(env.observation_shape), obs)
        return norm(obs, m), NormalizeObservationState(inner, m)

    def step(key, state, action):
        obs, inner, reward, terminated, truncated, info = env.step(key, state.inner, action)
        m = moments_update(state.moments, obs)
        info = {**info, "final_observation": norm(info["final_observation"], m)}
        return (
            norm(obs, m),
            NormalizeObservationState(inner, m),
            reward,
            terminated,
            truncated,
            info,
        )

    def observe(state, obs):  # frozen statistics: the env's state is not advanced
        return norm(env.observe(state.inner, obs), state.moments)

    return dataclasses.replace(env, reset=reset, step=step, observe=observe)


class NormalizeRewardState(NamedTuple):
    inner: Any
    discounted_return: jax.Array  # f32[n]: each copy's running discounted return
    moments: RunningMoments  # of the discounted returns


def normalize_reward(
    env: Env, *, gamma: float = 0.99, clip: float = 10.0, epsilon: float = 1e-8
) -> Env:
    r"""Rewards scaled by the running standard deviation of the discounted return (as
    gymnasium's ``NormalizeReward``; Engstrom et al. 2020, "Implementation Matters in Deep
    Policy Gradients"):

    .. math:: G \leftarrow \gamma G (1 - d_{t-1}) + r_t, \qquad
              r_t \mapsto \mathrm{clip}\big(r_t / \sqrt{\mathrm{Var}[G] + \epsilon}, -c, c\big).

    Only the learner's reward changes; ``info["episode_return"]`` stays in raw rewards.
    """
    check_vector_env(env)
    checks.probability("gamma", gamma)
    checks.positive("clip", clip)
    checks.positive("epsilon", epsilon)

    def reset(key):
        obs, inner = env.reset(key)
        zeros = jnp.zeros((env.num_envs,), jnp.float32)
        return obs, NormalizeRewardState(inner, zeros, moments_init())

    def step(key, state, action):
        obs, inner, reward, terminated, truncated, info = env.step(key, state.inner, action)
        ret = state.discounted_return * gamma + reward
        m = moments_update(state.moments, ret)
        scaled = jnp.clip(reward / jnp.sqrt(m.var + epsilon), -clip, clip)
        ret = jnp.where(info["done"], 0.0, ret)
        return obs, NormalizeRewardState(inner, ret, m), scaled, terminated, truncated, info

    observe = lambda state, obs: env.observe(state.inner, obs)
    return dataclasses.replace(env, reset=reset, step=step, observe=observe)


def make_vec_env(
    name: str,
    num_envs: int,
    *,
    normalize_obs: bool = False,
    normalize_reward_gamma: float | None = None,
    **params,
) -> Env:
    """``vectorize(make_env(name, **params), num_envs)``, optionally wrapped with
    :func:`normalize_reward` (given its ``gamma``) and :func:`normalize_observation`."""
    env = vectorize(make_env(name, **params), num_envs)
    if normalize_reward_gamma is not None:
        env = normalize_reward(env, gamma=normalize_reward_gamma)
    if normalize_obs:
        env = normalize_observation(env)
    return env
