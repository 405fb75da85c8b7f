"""Advantage actor-critic: synchronous A2C with all-reduced (or gossiped) gradients, and a
deterministic bounded-staleness A3C inside SPMD.

Both are per-worker :class:`~jdo.algorithms.Algorithm` s whose ``step(state, None, key)`` rolls
out the worker's own vector env (Anakin style: environment and learner in one jitted step) and
updates; the environment, its normalisation statistics and the episode statistics live in the
state, so a checkpoint of the state resumes the run exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks, comm
from jdo._axis import WORKERS
from jdo._logical import psum
from jdo.algorithms.base import Algorithm
from jdo.rl.envs import Env, check_vector_env
from jdo.rl.networks import Policy, make_policy
from jdo.rl.rollout import (
    EpisodeStats,
    advantages_of,
    episode_stats_init,
    episode_stats_metrics,
    rollout,
)
from jdo.topology import Topology
from jdo.transforms import all_reduce, gossip

COMMUNICATIONS = ("all_reduce", "gossip")
SCHEDULES = ("cyclic", "random")


class ActorCriticState(NamedTuple):
    """One worker's state: learner, environment and episode statistics."""

    params: Any
    opt_state: optax.OptState
    env_state: Any  # the vector env's state (normalisation statistics included)
    obs: jax.Array  # f32[N, obs]: the current observation of every env copy
    episodes: EpisodeStats
    step: jax.Array  # int32: updates so far


class A3CState(NamedTuple):
    """:class:`ActorCriticState` plus the ring buffer of the last ``τ+1`` param versions:
    version ``v`` sits in slot ``v mod (τ+1)``; the current params are version ``step``."""

    params: Any
    opt_state: optax.OptState
    env_state: Any
    obs: jax.Array
    episodes: EpisodeStats
    step: jax.Array
    history: Any  # every leaf [τ+1, ...]


# ----------------------------------------------------------------------------------------------
# The loss (public: jdo.rl.async_* builds the threaded asynchronous mode on it)
# ----------------------------------------------------------------------------------------------


def actor_critic_loss(
    apply: Callable,
    policy: Policy,
    params: Any,
    batch: dict[str, jax.Array],
    *,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    normalizer: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The advantage actor-critic loss of Mnih et al. 2016 ("Asynchronous Methods for Deep
    Reinforcement Learning"), a (masked) mean over the batch:

    .. math:: L(\theta) = \frac1{\sum_b m_b}\sum_b m_b\Big[-\log\pi_\theta(a_b|s_b)\,\hat A_b
              + \tfrac{c_v}{2} (V_\theta(s_b) - \hat R_b)^2
              - c_e\,\mathcal H[\pi_\theta(\cdot|s_b)]\Big],

    with the advantages :math:`\hat A` and returns :math:`\hat R` treated as constants and
    :math:`m_b = 1` unless the batch holds a ``mask``.

    Args:
      apply: ``apply(params, obs) -> (policy_out, value)`` (``jdo.models.functional`` of an
        :class:`~jdo.rl.networks.ActorCritic`).
      policy: :func:`~jdo.rl.networks.make_policy` of the action space.
      params: the network's params.
      batch: ``obs [B, ...]``, ``action [B, ...]``, ``advantage [B]``, ``return [B]``, and
        optionally ``mask [B]``: 0 for samples that must carry no weight (gymnasium's
        NEXT_STEP reset transitions, :class:`jdo.rl.host.Rollout`).
      value_coef: :math:`c_v`.
      entropy_coef: :math:`c_e`.
      normalizer: what to divide the masked sums by instead of :math:`\sum_b m_b` (the mask's
        sum over ALL learner workers, so that their summed gradients are the whole batch's).

    Returns:
      ``(loss, metrics)`` with ``policy_loss``, ``value_loss`` and ``entropy``.
    """
    out, value = apply(params, batch["obs"])
    adv = jax.lax.stop_gradient(batch["advantage"])
    target = jax.lax.stop_gradient(batch["return"])
    if "mask" in batch or normalizer is not None:
        mask = batch["mask"].astype(value.dtype) if "mask" in batch else jnp.ones_like(value)
        denom = jnp.maximum(jnp.sum(mask) if normalizer is None else normalizer, 1.0)
        mean = lambda x: jnp.sum(mask * x) / denom
    else:
        mean = jnp.mean
    policy_loss = -mean(policy.log_prob(out, batch["action"]) * adv)
    value_loss = 0.5 * mean(jnp.square(value - target))
    entropy = mean(policy.entropy(out))
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}


# ----------------------------------------------------------------------------------------------
# Shared pieces of the on-policy algorithms
# ----------------------------------------------------------------------------------------------


def check_common(env, optimizer, communication, topology, gamma, lam, num_steps, max_grad_norm):
    """The argument checks of the on-policy factories (each names its parameter)."""
    check_vector_env(env)
    checks.optimizer("optimizer", optimizer)
    checks.one_of("communication", communication, COMMUNICATIONS)
    if communication == "gossip" and not isinstance(topology, Topology):
        raise checks.WrongType(
            "topology",
            f"must be a jdo.topology.Topology with communication='gossip', got {topology!r}",
        )
    checks.probability("gamma", gamma)
    checks.probability("gae_lambda", lam)
    checks.positive_int("num_steps", num_steps)
    if max_grad_norm is not None:
        checks.positive("max_grad_norm", max_grad_norm)


def clipped(optimizer, max_grad_norm):
    """Global-norm clipping (None: none) then ``optimizer``: the single learner's chain."""
    clip = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []
    return optax.chain(*clip, optimizer)


def make_tx(optimizer, communication, topology, max_grad_norm, axis_name):
    """All-reduce: mean the gradients, clip, then the optimizer (every worker takes the same
    step). Gossip: clip, the optimizer, then mix the updated params with the neighbours
    (D-PSGD in adapt-then-combine form, Lian et al. 2017)."""
    if communication == "all_reduce":
        return optax.chain(all_reduce(axis_name), clipped(optimizer, max_grad_norm))
    return optax.chain(clipped(optimizer, max_grad_norm), gossip(topology, axis_name=axis_name))


def flatten_batch(traj, advantages, returns) -> dict[str, jax.Array]:
    """A ``[T, N]`` trajectory as one ``[T·N]`` batch, row-major (time-major)."""
    flat = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return {
        "obs": flat(traj.obs),
        "action": flat(traj.action),
        "log_prob": flat(traj.log_prob),
        "value": flat(traj.value),
        "advantage": flat(advantages),
        "return": flat(returns),
    }


def env_steps(step, env: Env, num_steps: int, axis_name: str) -> jax.Array:
    """Environment steps taken by ALL workers after ``step`` updates (f32: no overflow)."""
    per_update = num_steps * env.num_envs * psum(1, axis_name)  # psum(1) is static
    return step.astype(jnp.float32) * per_update


# ----------------------------------------------------------------------------------------------
# A2C
# ----------------------------------------------------------------------------------------------


def a2c(
    env: Env,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    communication: str = "all_reduce",
    topology: Topology | None = None,
    num_steps: int = 16,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    max_grad_norm: float | None = 0.5,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Synchronous advantage actor-critic (A2C; the synchronous variant of A3C, Mnih et al.
    2016, "Asynchronous Methods for Deep Reinforcement Learning").

    Each step, worker :math:`i` rolls out its ``N`` env copies for ``num_steps`` (T) steps with
    the current policy, computes :math:`\hat A` by GAE (``gae_lambda=1``: the n-step returns of
    the paper) and the gradient :math:`g_i = \nabla L_i` of :func:`actor_critic_loss` on its
    :math:`T N` samples, then

    - ``communication="all_reduce"``: :math:`\theta \leftarrow \theta +
      \mathrm{opt}(\mathrm{clip}(\frac1W\sum_i g_i))` on every worker (one learner on the
      union of the workers' samples);
    - ``communication="gossip"``: :math:`\theta_i \leftarrow \sum_j W_{ij}(\theta_j +
      \mathrm{opt}(\mathrm{clip}(g_j)))` over ``topology`` (decentralized A2C, D-PSGD style).

    Args:
      env: the worker's vector env (``jdo.rl.make_vec_env``); ``num_envs`` copies per worker.
      apply: ``apply(params, obs) -> (policy_out, value)``.
      optimizer: the optax optimizer (e.g. ``optax.adam(7e-4)``).
      communication: ``"all_reduce"`` or ``"gossip"``.
      topology: the gossip graph (``communication="gossip"``).
      num_steps: rollout length T per update.
      gamma, gae_lambda: discount and GAE λ (1: the paper's n-step returns).
      value_coef, entropy_coef: loss weights.
      max_grad_norm: global-norm gradient clipping (after the all-reduce); None: off.
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` with :class:`ActorCriticState`; ``step(state,
      None, key)`` reports ``loss``, ``episode_return`` (mean of this worker's last 100 finished
      episodes), ``env_steps`` (all workers, after this step), and the loss terms.
    """
    check_common(
        env, optimizer, communication, topology, gamma, gae_lambda, num_steps, max_grad_norm
    )
    return _actor_critic(
        env,
        apply,
        optimizer,
        communication,
        topology,
        num_steps,
        gamma,
        gae_lambda,
        value_coef,
        entropy_coef,
        max_grad_norm,
        axis_name,
        staleness=None,
        schedule="cyclic",
    )


def a3c(
    env: Env,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    staleness: int = 4,
    schedule: str = "cyclic",
    num_steps: int = 16,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    max_grad_norm: float | None = 0.5,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""A3C-style bounded staleness, deterministic inside SPMD (after Mnih et al. 2016,
    "Asynchronous Methods for Deep Reinforcement Learning", whose actor-learners compute
    gradients on a copy of the shared params that may be several updates old).

    The state keeps the last :math:`\tau+1` param versions :math:`\theta_{t-\tau..t}`. At step
    :math:`t` worker :math:`i` acts AND differentiates with version
    :math:`\theta_{t - s_i(t)}`, :math:`s_i(t) \in [0, \tau]` (clipped at version 0), and all
    workers apply the mean of these stale gradients to the current params:

    .. math:: g_i = \nabla L_i(\theta_{t-s_i(t)}), \qquad
              \theta_{t+1} = \theta_t + \mathrm{opt}\Big(\mathrm{clip}\big(\tfrac1W
              \textstyle\sum_i g_i\big)\Big).

    ``schedule="cyclic"``: :math:`s_i(t) = i \bmod (\tau+1)` (every staleness present at every
    step); ``"random"``: :math:`s_i(t)` uniform on :math:`\{0..\tau\}`, drawn from the step key
    (reproducible from the seed). ``staleness=0`` is exactly :func:`a2c` with all-reduce.
    Metrics add ``staleness`` (this worker's :math:`t - \text{version}`) and ``staleness/k``
    (1 where it is k): averaged over workers and steps, the staleness histogram.

    Args:
      staleness: :math:`\tau \ge 0`.
      schedule: ``"cyclic"`` or ``"random"``.
      (the rest as :func:`a2c`; communication is all-reduce).

    Returns:
      An :class:`~jdo.algorithms.Algorithm` with :class:`A3CState`.
    """
    check_common(env, optimizer, "all_reduce", None, gamma, gae_lambda, num_steps, max_grad_norm)
    checks.non_negative_int("staleness", staleness)
    checks.one_of("schedule", schedule, SCHEDULES)
    return _actor_critic(
        env,
        apply,
        optimizer,
        "all_reduce",
        None,
        num_steps,
        gamma,
        gae_lambda,
        value_coef,
        entropy_coef,
        max_grad_norm,
        axis_name,
        staleness=staleness,
        schedule=schedule,
    )


def _actor_critic(
    env,
    apply,
    optimizer,
    communication,
    topology,
    num_steps,
    gamma,
    lam,
    value_coef,
    entropy_coef,
    max_grad_norm,
    axis_name,
    *,
    staleness,
    schedule,
):
    policy = make_policy(env.action_space)
    tx = make_tx(optimizer, communication, topology, max_grad_norm, axis_name)
    loss = lambda p, b: actor_critic_loss(
        apply, policy, p, b, value_coef=value_coef, entropy_coef=entropy_coef
    )
    slots = None if staleness is None else staleness + 1

    def init(params, key):
        obs, env_state = env.reset(key)
        common = (
            params,
            tx.init(params),
            env_state,
            obs,
            episode_stats_init(),
            jnp.zeros((), jnp.int32),
        )
        if slots is None:
            return ActorCriticState(*common)
        history = jax.tree.map(lambda p: jnp.broadcast_to(p, (slots, *p.shape)), params)
        return A3CState(*common, history)

    def step(state, batch, key):
        del batch  # on-policy RL makes its own data
        roll_key, sched_key = jax.random.split(key)
        metrics = {}
        if slots is None:
            acting = state.params
        else:  # 1. pick the (stale) version this worker acts and differentiates with
            if schedule == "cyclic":
                lag = comm.worker_index(axis_name) % slots
            else:
                lag = jax.random.randint(sched_key, (), 0, slots)
            lag = jnp.minimum(lag, state.step)  # no versions before the first
            slot = (state.step - lag) % slots
            acting = jax.tree.map(lambda h: h[slot], state.history)
            metrics["staleness"] = lag.astype(jnp.float32)
            for k in range(slots):
                metrics[f"staleness/{k}"] = (lag == k).astype(jnp.float32)
        # 2. roll out, 3. advantages, 4. local gradient
        env_state, obs, traj, episodes = rollout(
            env,
            policy,
            apply,
            acting,
            state.env_state,
            state.obs,
            roll_key,
            num_steps,
            state.episodes,
        )
        adv, ret = advantages_of(traj, apply, acting, gamma=gamma, lam=lam)
        (loss_value, aux), grads = jax.value_and_grad(loss, has_aux=True)(
            acting, flatten_batch(traj, adv, ret)
        )
        # 5. communicate and apply to the current params
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        common = (params, opt_state, env_state, obs, episodes, new_step)
        if slots is None:
            new_state = ActorCriticState(*common)
        else:
            history = jax.tree.map(
                lambda h, p: h.at[new_step % slots].set(p), state.history, params
            )
            new_state = A3CState(*common, history)
        metrics = {
            "loss": loss_value,
            **aux,
            **episode_stats_metrics(episodes),
            "env_steps": env_steps(new_step, env, num_steps, axis_name),
            **metrics,
        }
        return new_state, metrics

    return Algorithm(init, step)
