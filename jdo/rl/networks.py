"""Actor-critic networks (Flax NNX) and the action distributions their outputs parameterise.

``ActorCritic(obs_size, action_space, rngs=...)`` maps observations ``f32[B, obs]`` to
``(policy_out f32[B, k], value f32[B])``; :func:`make_policy` turns ``policy_out`` into a
distribution (categorical logits for discrete actions; a diagonal Gaussian ``[mean, log_std]``
for continuous ones). ``jdo.models.functional(model)`` gives the pure ``(apply, params)``
(:func:`make_network`). DDPG's deterministic actor and Q critic: :class:`DDPGNetworks`
(:func:`make_ddpg_networks`, :func:`deterministic_policy`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks
from jdo.checks import InvalidArgument
from jdo.models import functional
from jdo.rl.envs import ActionSpace, Env

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class ActorCritic(nnx.Module):
    """Separate actor and critic MLPs with orthogonal initialisation (gain √2 in the hidden
    layers, 0.01 for the policy head, 1 for the value head; Engstrom et al. 2020,
    "Implementation Matters in Deep Policy Gradients"). Continuous actions add a learned,
    state-independent log standard deviation (initialised to 0)."""

    def __init__(
        self,
        obs_size: int,
        action_space: ActionSpace,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        rngs: nnx.Rngs,
    ):
        checks.one_of("activation", activation, ACTIVATIONS)
        hidden = checks.int_sequence("hidden", hidden, minimum=1, allow_empty=False)
        self.activation = activation
        self.discrete = action_space.discrete
        ortho = nnx.initializers.orthogonal
        sizes = [obs_size, *(int(h) for h in hidden)]

        def trunk():
            return nnx.List(
                [
                    nnx.Linear(a, b, kernel_init=ortho(math.sqrt(2)), rngs=rngs)
                    for a, b in zip(sizes[:-1], sizes[1:], strict=True)
                ]
            )

        self.actor = trunk()
        self.critic = trunk()
        self.policy_head = nnx.Linear(
            sizes[-1], action_space.size, kernel_init=ortho(0.01), rngs=rngs
        )
        self.value_head = nnx.Linear(sizes[-1], 1, kernel_init=ortho(1.0), rngs=rngs)
        if not self.discrete:
            self.log_std = nnx.Param(jnp.zeros((action_space.size,), jnp.float32))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:  # x: f32[B, obs]
        act = ACTIVATIONS[self.activation]
        x = x.reshape(x.shape[0], -1)
        a, c = x, x
        for layer in self.actor:
            a = act(layer(a))
        for layer in self.critic:
            c = act(layer(c))
        out = self.policy_head(a)
        if not self.discrete:
            out = jnp.concatenate([out, jnp.broadcast_to(self.log_std[...], out.shape)], -1)
        return out, self.value_head(c)[:, 0]


@dataclasses.dataclass(frozen=True)
class Policy:
    """Pure functions of a network's policy output ``out`` (batched on leading axes).

    Attributes:
      sample: ``sample(key, out) -> action``.
      log_prob: ``log_prob(out, action) -> f32``.
      entropy: ``entropy(out) -> f32``.
      mode: ``mode(out) -> action`` (greedy / mean action).
      to_env: ``to_env(action) -> action`` as the environment takes it (continuous actions are
        clipped to the bounds; the learner keeps the unclipped sample for its log-probability).
    """

    sample: Callable
    log_prob: Callable
    entropy: Callable
    mode: Callable
    to_env: Callable


def make_policy(action_space: ActionSpace) -> Policy:
    """The categorical (discrete) or diagonal Gaussian (continuous) policy of ``action_space``."""
    if action_space.discrete:

        def sample(key, logits):
            return jax.random.categorical(key, logits).astype(jnp.int32)

        def log_prob(logits, action):
            logp = jax.nn.log_softmax(logits)
            return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), -1)[..., 0]

        def entropy(logits):
            logp = jax.nn.log_softmax(logits)
            return -jnp.sum(jnp.exp(logp) * logp, -1)

        def mode(logits):
            return jnp.argmax(logits, -1).astype(jnp.int32)

        return Policy(sample, log_prob, entropy, mode, lambda a: a)

    d = action_space.size
    low = jnp.asarray(action_space.low, jnp.float32)
    high = jnp.asarray(action_space.high, jnp.float32)
    split = lambda out: (out[..., :d], out[..., d:])

    def sample(key, out):
        mean, log_std = split(out)
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def log_prob(out, action):
        mean, log_std = split(out)
        z = (action - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)

    def entropy(out):
        _, log_std = split(out)
        return jnp.sum(log_std + 0.5 * (1.0 + jnp.log(2 * jnp.pi)), -1)

    def mode(out):
        return split(out)[0]

    return Policy(sample, log_prob, entropy, mode, lambda a: jnp.clip(a, low, high))


def deterministic_policy(action_space: ActionSpace) -> Policy:
    """A deterministic policy whose output IS the action (DDPG's actor without its
    exploration noise): ``sample`` and ``mode`` return it, ``to_env`` clips it to the bounds.
    It has no density: ``log_prob`` and ``entropy`` raise ``TypeError``."""
    if action_space.discrete:
        raise InvalidArgument("action_space", "must be continuous for a deterministic policy")
    low = jnp.asarray(action_space.low, jnp.float32)
    high = jnp.asarray(action_space.high, jnp.float32)

    def no_density(*args):
        raise TypeError("a deterministic policy has no log-probability or entropy")

    return Policy(
        lambda key, out: out,
        no_density,
        no_density,
        lambda out: out,
        lambda a: jnp.clip(a, low, high),
    )


# ----------------------------------------------------------------------------------------------
# DDPG: a deterministic actor and a Q critic
# ----------------------------------------------------------------------------------------------


class DeterministicActor(nnx.Module):
    r""":math:`\mu(s) = \ell + (\tanh(f(s)) + 1)(h - \ell)/2`: an MLP squashed into the action
    bounds :math:`[\ell, h]`."""

    def __init__(self, obs_size, low, high, *, hidden=(64, 64), rngs: nnx.Rngs):
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

    def __init__(self, obs_size, action_size, *, hidden=(64, 64), rngs: nnx.Rngs):
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

    def __init__(
        self, obs_size: int, action_space: ActionSpace, *, hidden=(64, 64), rngs: nnx.Rngs
    ):
        if action_space.discrete:
            raise InvalidArgument("action_space", "must be continuous for DDPG, got a discrete one")
        hidden = checks.int_sequence("hidden", hidden, minimum=1, allow_empty=False)
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


def make_network(env: Env, hidden: Sequence[int] = (64, 64), seed: int = 0) -> tuple[Callable, Any]:
    """``(apply, params)`` of an :class:`ActorCritic` sized for ``env``."""
    model = ActorCritic(env.observation_size, env.action_space, hidden=hidden, rngs=nnx.Rngs(seed))
    return functional(model)


def make_ddpg_networks(env: Env, hidden: Sequence[int] = (64, 64), seed: int = 0):
    """``(apply, params)`` of :class:`DDPGNetworks` for ``env`` (continuous actions):
    ``apply(params, obs) -> (action, q)``, ``apply(params, (obs, action)) -> q``."""
    if env.action_space.discrete:
        raise InvalidArgument(
            "env", f"must have continuous actions for DDPG; {env.name} has discrete ones"
        )
    return functional(
        DDPGNetworks(env.observation_size, env.action_space, hidden=hidden, rngs=nnx.Rngs(seed))
    )
