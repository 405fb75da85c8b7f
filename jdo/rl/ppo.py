"""Proximal policy optimization over the worker axis: all-reduce (one learner on the union of
the workers' samples) or gossip (decentralized PPO, D-PSGD style mixing of the params)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.algorithms.base import Algorithm
from jdo.comm.collectives import mean
from jdo.comm.control import scan
from jdo.rl.a2c import (
    ActorCriticState,
    check_common,
    env_steps,
    flatten_batch,
    make_tx,
)
from jdo.rl.envs import Env
from jdo.rl.networks import Policy, make_policy
from jdo.rl.rollout import advantages_of, episode_stats_init, episode_stats_metrics, rollout
from jdo.topology import Topology

PPOState = ActorCriticState


def ppo_loss(
    apply: Callable,
    policy: Policy,
    params: Any,
    batch: dict[str, jax.Array],
    *,
    clip_eps: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The clipped surrogate loss of Schulman et al. 2017 ("Proximal Policy Optimization
    Algorithms"), a mean over the batch, with :math:`\rho = \pi_\theta(a|s)/\pi_{old}(a|s)`:

    .. math:: L = -\overline{\min(\rho \hat A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon)
              \hat A)} + c_v\,\overline{\tfrac12 (V_\theta(s) - \hat R)^2}
              - c_e\,\overline{\mathcal H[\pi_\theta]}.

    ``batch``: ``obs``, ``action``, ``log_prob`` (under the behaviour params), ``advantage``
    (already normalised if wanted), ``return``.
    """
    out, value = apply(params, batch["obs"])
    log_prob = policy.log_prob(out, batch["action"])
    log_ratio = log_prob - batch["log_prob"]
    ratio = jnp.exp(log_ratio)
    adv = batch["advantage"]
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    policy_loss = -jnp.mean(surrogate)
    value_loss = 0.5 * jnp.mean(jnp.square(value - batch["return"]))
    entropy = jnp.mean(policy.entropy(out))
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": jnp.mean((ratio - 1) - log_ratio),  # Schulman's k3 estimator, >= 0
        "clip_fraction": jnp.mean((jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32)),
    }
    return loss, metrics


def minibatch_indices(key: jax.Array, batch_size: int, epochs: int, num_minibatches: int):
    """``int32[epochs, num_minibatches, batch_size // num_minibatches]``: a fresh permutation
    of ``range(batch_size)`` per epoch, cut into equal minibatches."""
    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(jax.random.split(key, epochs))
    return perms.reshape(epochs, num_minibatches, batch_size // num_minibatches).astype(jnp.int32)


def make_ppo_update(
    apply: Callable,
    policy: Policy,
    tx: optax.GradientTransformation,
    *,
    clip_eps: float,
    value_coef: float,
    entropy_coef: float,
    normalize_advantages: bool,
    global_advantage_stats: bool,
    axis_name: str = WORKERS,
):
    """``update(params, opt_state, batch, indices) -> (params, opt_state, metrics)``: PPO's
    epochs of minibatch steps on one worker's flat batch (see :func:`ppo`), with ``indices``
    from :func:`minibatch_indices`. Metrics are means over the minibatch steps.

    ``global_advantage_stats``: normalise each minibatch's advantages with the mean/variance of
    the union of the workers' minibatches (two scalars all-reduced), so that W workers with
    all-reduce equal one worker on the concatenated batch; otherwise with local statistics.
    """
    loss = lambda p, b: ppo_loss(
        apply, policy, p, b, clip_eps=clip_eps, value_coef=value_coef, entropy_coef=entropy_coef
    )

    def normalise(adv):
        m, m2 = jnp.mean(adv), jnp.mean(jnp.square(adv))
        if global_advantage_stats:
            m, m2 = mean((m, m2), axis_name)
        std = jnp.sqrt(jnp.maximum(m2 - jnp.square(m), 0.0))
        return (adv - m) / (std + 1e-8)

    def update(params, opt_state, batch, indices):
        def minibatch_step(carry, idx):
            params, opt_state = carry
            mb = jax.tree.map(lambda x: x[idx], batch)
            if normalize_advantages:
                mb = {**mb, "advantage": normalise(mb["advantage"])}
            (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), {"loss": value, **aux}

        flat_idx = indices.reshape(-1, indices.shape[-1])  # [epochs · minibatches, size]
        (params, opt_state), metrics = scan(minibatch_step, (params, opt_state), flat_idx)
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return update


def ppo(
    env: Env,
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    communication: str = "all_reduce",
    topology: Topology | None = None,
    num_steps: int = 128,
    epochs: int = 4,
    num_minibatches: int = 8,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
    clip_eps: float = 0.2,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    max_grad_norm: float | None = 0.5,
    normalize_advantages: bool = True,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Proximal policy optimization (Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms") with GAE (Schulman et al. 2016), one worker's step:

    1. roll out the worker's ``N`` env copies for T = ``num_steps`` steps with
       :math:`\pi_{\theta_{old}}`;
    2. :math:`\hat A, \hat R` by GAE(γ, λ) (reverse scan; episodes cut at done, bootstrapped
       from the final observation on truncation only);
    3. for each of ``epochs`` epochs, shuffle the :math:`TN` samples into ``num_minibatches``
       minibatches; for each, the gradient :math:`g_i` of :func:`ppo_loss` (clipped
       surrogate; advantages normalised per minibatch) and

       - ``communication="all_reduce"``: :math:`\theta \leftarrow \theta +
         \mathrm{opt}(\mathrm{clip}(\frac1W\sum_i g_i))`: worker i's minibatch is its share
         of a global minibatch, and advantage statistics are those of the global minibatch,
         so W workers equal ONE learner on the concatenated batch (tested);
       - ``communication="gossip"``: :math:`\theta_i \leftarrow \sum_j W_{ij}(\theta_j +
         \mathrm{opt}(\mathrm{clip}(g_j)))` over ``topology`` after every minibatch step
         (decentralized PPO, D-PSGD style; local advantage statistics).

    Args:
      env: the worker's vector env (``jdo.rl.make_vec_env``).
      apply: ``apply(params, obs) -> (policy_out, value)``.
      optimizer: the optax optimizer (e.g. ``optax.adam(2.5e-4)``).
      communication, topology: as :func:`jdo.rl.a2c.a2c`.
      num_steps, epochs, num_minibatches: T, the epochs, the minibatches per epoch
        (``num_steps · num_envs`` must be divisible by ``num_minibatches``).
      gamma, gae_lambda, clip_eps, value_coef, entropy_coef: the usual PPO hyperparameters.
      max_grad_norm: global-norm clipping after the all-reduce; None: off.
      normalize_advantages: standardise the advantages of each minibatch.
      axis_name: the workers' named axis.

    Returns:
      An :class:`~jdo.algorithms.Algorithm` with :class:`ActorCriticState`; metrics as
      :func:`~jdo.rl.a2c.a2c` plus ``approx_kl`` and ``clip_fraction``.
    """
    check_common(
        env, optimizer, communication, topology, gamma, gae_lambda, num_steps, max_grad_norm
    )
    checks.positive_int("epochs", epochs)
    checks.positive_int("num_minibatches", num_minibatches)
    batch_size = num_steps * env.num_envs
    if batch_size % num_minibatches:
        raise checks.InvalidArgument(
            "num_minibatches",
            f"must divide num_steps · num_envs "
            f"({num_steps} · {env.num_envs} = {batch_size}), got "
            f"{num_minibatches}",
        )
    checks.positive("clip_eps", clip_eps)
    policy = make_policy(env.action_space)
    tx = make_tx(optimizer, communication, topology, max_grad_norm, axis_name)
    update = make_ppo_update(
        apply,
        policy,
        tx,
        clip_eps=clip_eps,
        value_coef=value_coef,
        entropy_coef=entropy_coef,
        normalize_advantages=normalize_advantages,
        global_advantage_stats=communication == "all_reduce",
        axis_name=axis_name,
    )

    def init(params, key):
        obs, env_state = env.reset(key)
        return PPOState(
            params, tx.init(params), env_state, obs, episode_stats_init(), jnp.zeros((), jnp.int32)
        )

    def step(state, batch, key):
        del batch  # on-policy RL makes its own data
        roll_key, perm_key = jax.random.split(key)
        env_state, obs, traj, episodes = rollout(  # 1.
            env,
            policy,
            apply,
            state.params,
            state.env_state,
            state.obs,
            roll_key,
            num_steps,
            state.episodes,
        )
        adv, ret = advantages_of(traj, apply, state.params, gamma=gamma, lam=gae_lambda)  # 2.
        indices = minibatch_indices(perm_key, batch_size, epochs, num_minibatches)
        params, opt_state, metrics = update(  # 3.
            state.params, state.opt_state, flatten_batch(traj, adv, ret), indices
        )
        new_step = state.step + 1
        new_state = PPOState(params, opt_state, env_state, obs, episodes, new_step)
        metrics = {
            **metrics,
            **episode_stats_metrics(episodes),
            "env_steps": env_steps(new_step, env, num_steps, axis_name),
        }
        return new_state, metrics

    return Algorithm(init, step)
