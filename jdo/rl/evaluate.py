"""Evaluation on fresh episodes: the undiscounted return of a policy, as a pure function of its
params (jit it, vmap it over workers or seeds), and one worker's evaluation from its algorithm
state (what the runner logs as ``eval/return`` and ``eval/return_greedy``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdo import checks
from jdo.rl.envs import Env, make_env, vectorize
from jdo.rl.networks import Policy, make_policy


def evaluate_policy(
    env: str | Env,
    apply: Callable,
    params: Any,
    key: jax.Array,
    *,
    num_episodes: int = 100,
    greedy: bool = False,
    policy: Policy | None = None,
    env_params: Mapping[str, Any] | None = None,
    obs_transform: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Returns ``f32[num_episodes]``: the undiscounted return of ``num_episodes`` fresh
    episodes of the policy ``apply(params, .)``, one per env copy, each run to its end
    (termination or the time limit). Pure: wrap it in ``jax.jit``.

    The episodes run in a ``lax.while_loop`` that stops once every one has ended (at most the
    time limit's steps). Episode ``i`` starts from ``reset(split(split(key)[0], n)[i])``; the
    step-``t`` action and env keys are ``split(fold_in(split(key)[1], t))``.

    Args:
      env: a single (not vectorized) :class:`~jdo.rl.envs.Env` with raw observations, or an
        environment id (made with ``env_params``).
      apply: ``apply(params, obs[B, ...]) -> (policy_out, value)``.
      params: the network's params.
      key: a PRNG key.
      num_episodes: how many episodes.
      greedy: act with ``policy.mode`` (the most likely / mean action) instead of sampling.
      policy: how ``policy_out`` becomes an action; default :func:`~jdo.rl.make_policy` of the
        env's action space (:func:`~jdo.rl.networks.deterministic_policy` for DDPG).
      env_params: gymnax ``EnvParams`` overrides, when ``env`` is an id.
      obs_transform: maps raw observations to what the policy saw in training (e.g. a frozen
        observation normaliser, :attr:`Env.observe`); default the identity.
    """
    checks.positive_int("num_episodes", num_episodes)
    if isinstance(env, str):
        env = make_env(env, **dict(env_params or {}))
    elif not isinstance(env, Env):
        raise checks.WrongType("env", f"must be an environment id or a jdo.rl.Env, got {env!r}")
    elif env.num_envs is not None:
        raise checks.InvalidArgument("env", "must be a single env (make_env), not a vector one")
    policy = make_policy(env.action_space) if policy is None else policy
    venv = vectorize(env, num_episodes)
    transform = obs_transform or (lambda o: o)
    reset_key, run_key = jax.random.split(key)
    obs, state = venv.reset(reset_key)

    def running(carry):
        t, _, _, _, finished = carry
        return (t < env.max_episode_steps) & ~jnp.all(finished)

    def body(carry):
        t, state, obs, returns, finished = carry
        act_key, env_key = jax.random.split(jax.random.fold_in(run_key, t))
        out, _ = apply(params, transform(obs))
        action = policy.mode(out) if greedy else policy.sample(act_key, out)
        obs, state, _, _, _, info = venv.step(env_key, state, policy.to_env(action))
        first = info["done"] & ~finished  # each copy's first episode only
        returns = jnp.where(first, info["episode_return"], returns)
        return t + 1, state, obs, returns, finished | info["done"]

    zeros = jnp.zeros((num_episodes,), jnp.float32)
    carry = (jnp.zeros((), jnp.int32), state, obs, zeros, jnp.zeros((num_episodes,), bool))
    return jax.lax.while_loop(running, body, carry)[3]


def make_evaluate_worker(
    env: Env,
    train_env: Env,
    apply: Callable,
    *,
    num_episodes: int,
    policy: Policy | None = None,
    deterministic: bool = False,
) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
    """``evaluate(state, key) -> {"return", "return_greedy"}`` for ONE worker's algorithm state
    (any state with ``params`` and ``env_state``: A2C, A3C, PPO, DDPG): the mean return of
    ``num_episodes`` fresh episodes of ``env`` with sampled actions, and with the greedy (mode)
    action. Observations go through ``train_env.observe(state.env_state, .)``: the worker's
    own normaliser, frozen. Pure; the runner vmaps it over workers.

    ``deterministic`` (DDPG: the actor's output is the action, evaluated without exploration
    noise): only ``"return"``, since sampling and the mode coincide.
    """
    checks.positive_int("num_episodes", num_episodes)
    evaluate = lambda state, key, greedy: jnp.mean(
        evaluate_policy(
            env,
            apply,
            state.params,
            key,
            num_episodes=num_episodes,
            greedy=greedy,
            policy=policy,
            obs_transform=lambda obs: train_env.observe(state.env_state, obs),
        )
    )

    def evaluate_worker(state, key):
        sample_key, greedy_key = jax.random.split(key)
        if deterministic:
            return {"return": evaluate(state, sample_key, True)}
        return {
            "return": evaluate(state, sample_key, False),
            "return_greedy": evaluate(state, greedy_key, True),
        }

    return evaluate_worker
