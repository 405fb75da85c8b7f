"""Actor-critic networks (Flax NNX) and the action distributions their outputs parameterise.

``ActorCritic(obs_size, action_space, rngs=...)`` maps observations ``f32[B, obs]`` to
``(policy_out f32[B, k], value f32[B])``; :func:`make_policy` turns ``policy_out`` into a
distribution (categorical logits for discrete actions; a diagonal Gaussian ``[mean, log_std]``
for continuous ones). ``jdo.models.functional(model)`` gives the pure ``(apply, params)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo.checks import InvalidArgument
from jdo.rl.envs import ActionSpace

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
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"ActorCritic: activation must be one of {', '.join(ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"ActorCritic: hidden must be positive sizes, got {list(hidden)}")
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
        self.policy_head = nnx.Linear(sizes[-1], action_space.size, kernel_init=ortho(0.01),
                                      rngs=rngs)  # fmt: skip
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
