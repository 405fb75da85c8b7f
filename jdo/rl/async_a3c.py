"""Genuinely asynchronous A3C: actor threads on one host, each with its own vector env
(JAX-native from ``jdo.rl.envs``, or gymnasium on the host through ``jdo.rl.host``), computing
gradients on the policy version they last pulled and pushing them to a learner that applies
them with an optax optimizer as they arrive.

This is host code on :mod:`jdo.rl.host`'s plumbing (:class:`~jdo.rl.host.ParamsServer`,
:class:`~jdo.rl.host.ActorThreads`); the device code is two jitted pure functions: the actors'
``rollout + gradient`` (:func:`jdo.rl.actor_critic_loss`) and the learner's ``clip + optimizer``
step. SPMD cannot express it (workers do not advance in lock-step); :func:`jdo.rl.a3c` is the
deterministic, bounded-staleness SPMD counterpart.

Determinism. Each actor's keys are ``fold_in(fold_in(key, actor), iteration)`` and its
environments are its own, so a gradient is a deterministic function of the params version it
was computed on. What is NOT deterministic with more than one actor is the thread interleaving:
which version each actor pulls, and in ``"drop"``/unbounded mode the order gradients reach the
learner. With ``num_actors=1`` a run is exactly reproducible.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import numpy as np
import optax

from jdo import checks
from jdo.rl import host
from jdo.rl.a2c import actor_critic_loss, clipped, flatten_batch
from jdo.rl.envs import ActionSpace, Env, as_action_space
from jdo.rl.networks import make_policy
from jdo.rl.rollout import (
    EPISODE_WINDOW,
    EpisodeStats,
    advantages_of,
    episode_stats_init,
    episode_stats_merge,
    episode_stats_metrics,
    rollout,
)

ON_STALE = ("drop", "wait")


class Gradient(NamedTuple):
    """What an actor pushes: a gradient on the params version it pulled, and what it cost."""

    grads: Any
    metrics: dict  # loss terms (device scalars)
    episodes: EpisodeStats  # the episodes that finished in this rollout
    env_steps: int  # env steps behind this gradient (masked reset transitions excluded)


# ----------------------------------------------------------------------------------------------
# Device code (jitted once per env / network / hyperparameters: runs share compilations)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _learner_step(optimizer, max_grad_norm):
    tx = clipped(optimizer, max_grad_norm)

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return tx, step


@functools.lru_cache(maxsize=16)
def _jax_gradient(env, apply, num_steps, gamma, lam, value_coef, entropy_coef):
    """``gradient(params, env_state, obs, key)``: a rollout of a JAX-native vector env and the
    actor-critic gradient on it."""
    policy = make_policy(env.action_space)

    @jax.jit
    def gradient(params, env_state, obs, key):
        env_state, obs, traj, episodes = rollout(
            env, policy, apply, params, env_state, obs, key, num_steps, episode_stats_init()
        )
        adv, ret = advantages_of(traj, apply, params, gamma=gamma, lam=lam)
        loss = lambda p: actor_critic_loss(
            apply,
            policy,
            p,
            flatten_batch(traj, adv, ret),
            value_coef=value_coef,
            entropy_coef=entropy_coef,
        )
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return grads, env_state, obs, episodes, {"loss": value, **aux}

    return jax.jit(env.reset), gradient


@functools.lru_cache(maxsize=16)
def _host_gradient(apply, space: ActionSpace, gamma, lam, value_coef, entropy_coef):
    """``(act, gradient(params, rollout))`` for gymnasium actors (reset transitions masked)."""
    policy = make_policy(space)
    loss = functools.partial(
        host.rollout_loss,
        apply,
        policy,
        gamma=gamma,
        lam=lam,
        value_coef=value_coef,
        entropy_coef=entropy_coef,
    )

    @jax.jit
    def gradient(params, rollout):
        (value, aux), grads = jax.value_and_grad(lambda p: loss(p, rollout), has_aux=True)(params)
        return grads, {"loss": value, **aux}

    return host.acting_policy(apply, policy), gradient


# ----------------------------------------------------------------------------------------------
# Actors: params -> Gradient
# ----------------------------------------------------------------------------------------------


class _JaxActor:
    """An actor on its own copy of a JAX-native vector env (state kept on the device)."""

    def __init__(self, env, fns, key, num_steps: int):
        reset, self.gradient = fns
        self.obs, self.env_state = reset(key)
        self.per_gradient = num_steps * env.num_envs

    def __call__(self, params, key) -> Gradient:
        grads, self.env_state, self.obs, episodes, metrics = self.gradient(
            params, self.env_state, self.obs, key
        )
        return Gradient(grads, metrics, episodes, self.per_gradient)


class _GymActor:
    """An actor on its own gymnasium vector env (:class:`jdo.rl.host.HostActor`)."""

    def __init__(self, envs, fns, num_steps: int, seed: int):
        act, self.gradient = fns
        self.actor, self.num_steps = host.HostActor(envs, act, seed=seed), num_steps

    def __call__(self, params, key) -> Gradient:
        r = host.as_arrays(self.actor.rollout(params, key, self.num_steps))
        grads, metrics = self.gradient(params, r)
        return Gradient(grads, metrics, self.actor.last_episodes, int(r.valid.sum()))


def _make_actors(env, apply, num_actors, num_steps, loss_args, seed):
    """``num_actors + 1`` actors (the last one only compiles, on envs of its own) and the envs
    made here (to close)."""
    key = jax.random.key(seed)
    if isinstance(env, Env):
        fns = _jax_gradient(env, apply, num_steps, *loss_args)
        keys = [jax.random.fold_in(jax.random.fold_in(key, i), 1 << 30) for i in range(num_actors)]
        return [_JaxActor(env, fns, k, num_steps) for k in [*keys, key]], []
    owned = [env(i) for i in range(num_actors + 1)]
    fns = _host_gradient(apply, as_action_space(owned[0].single_action_space), *loss_args)
    seeds = [seed + 10_000 * i for i in range(num_actors)] + [seed]
    return [_GymActor(e, fns, num_steps, s) for e, s in zip(owned, seeds, strict=True)], owned


# ----------------------------------------------------------------------------------------------
# The learner
# ----------------------------------------------------------------------------------------------

_merge = jax.jit(episode_stats_merge)
_mean_return = jax.jit(lambda stats: episode_stats_metrics(stats)["episode_return"])


class _Learner:
    """Applies the actors' gradients as they arrive (or, ``ordered``, in pull order), drops
    those staler than ``max_staleness``, and keeps the run's records; owns the
    :class:`~jdo.rl.host.ParamsServer` the actors pull from."""

    def __init__(self, step, params, opt_state, num_actors, max_staleness, on_stale, callback):
        # "wait": pulls wait while max_staleness + 1 pulled gradients are unapplied, and the
        # gradients are applied in pull order
        self.ordered = max_staleness is not None and on_stale == "wait"
        self.server = host.ParamsServer(
            params, num_actors, max_in_flight=max_staleness + 1 if self.ordered else None
        )
        self.step, self.params, self.opt_state = step, params, opt_state
        self.max_staleness, self.callback = max_staleness, callback
        self.pending: dict[int, host.Item] = {}  # ordered: pushes that came before their turn
        self.next_ticket = 0
        self.history: list[dict] = []
        self.histogram: collections.Counter[int] = collections.Counter()
        self.stats = episode_stats_init()
        self.dropped = self.env_steps = self.received = 0

    def receive(self, item: host.Item, max_updates: int, target_return) -> bool:
        """Takes one push; True once ``max_updates`` are applied or the target is reached."""
        self.received += 1
        self.env_steps += item.payload.env_steps
        self.stats = _merge(self.stats, item.payload.episodes)
        ready = [item]
        if self.ordered:
            self.pending[item.ticket], ready = item, []
            while self.next_ticket in self.pending:
                ready.append(self.pending.pop(self.next_ticket))
                self.next_ticket += 1
        for it in ready:
            self.apply(it)
            if len(self.history) >= max_updates or self.reached(target_return):
                return True
        return False

    def apply(self, item: host.Item) -> None:
        staleness = self.server.version - item.version
        if self.max_staleness is not None and staleness > self.max_staleness:
            self.dropped += 1  # only in "drop" mode: "wait" never lets it happen
            self.server.consumed(item.actor)
            return
        self.params, self.opt_state = self.step(self.params, self.opt_state, item.payload.grads)
        self.server.consumed(item.actor, self.params)
        self.histogram[staleness] += 1
        metrics = {k: float(v) for k, v in jax.device_get(item.payload.metrics).items()}
        metrics.update(
            staleness=float(staleness),
            episode_return=self.mean_return(),
            env_steps=float(self.env_steps),
            dropped=float(self.dropped),
        )
        self.history.append(metrics)
        if self.callback is not None:
            self.callback(len(self.history) - 1, metrics)

    def mean_return(self) -> float:
        return float(_mean_return(self.stats))

    def reached(self, target_return) -> bool:
        full = int(self.stats.count) >= EPISODE_WINDOW
        return target_return is not None and full and self.mean_return() >= target_return

    def staleness_histogram(self) -> np.ndarray:
        size = max(self.histogram, default=-1) + 1
        return np.array([self.histogram[s] for s in range(size)], np.int64)

    def result(self, target_return, wall_s: float, compile_s: float) -> dict[str, Any]:
        """:func:`async_a3c`'s return value."""
        return {
            "params": self.params,
            "opt_state": self.opt_state,
            "history": self.history,
            "updates": len(self.history),
            "env_steps": self.env_steps,
            "gradients": self.received,
            "wall_s": wall_s,
            "compile_s": compile_s,
            "dropped": self.dropped,
            "staleness_histogram": self.staleness_histogram(),
            "episode_return": self.mean_return(),
            "reached_target": self.reached(target_return),
        }


def _compile(actor, optimizer, max_grad_norm, params, seed):
    """``(step, opt_state, compile_s)``: the learner's step and initial optimizer state, with
    both jitted functions compiled before the clock starts (once, not once per thread) on the
    spare ``actor``, which does not run afterwards."""
    t_compile = time.perf_counter()
    tx, step = _learner_step(optimizer, max_grad_norm)
    opt_state = tx.init(params)
    warm = actor(params, jax.random.key(seed))
    jax.block_until_ready(step(params, opt_state, warm.grads))
    return step, opt_state, time.perf_counter() - t_compile


def _run(actors, learner: _Learner, seed, max_updates, target_return, max_seconds) -> float:
    """Runs one thread per actor, feeding their gradients to ``learner`` until it is done or
    ``max_seconds`` have passed; returns the wall time."""
    produce = lambda i, p, key: actors[i](p, key)
    keys = [jax.random.fold_in(jax.random.key(seed), i) for i in range(len(actors))]
    t0 = time.perf_counter()
    with host.ActorThreads(produce, learner.server, keys, name="jdo-a3c-actor") as threads:
        done = False
        while not done:
            left = None if max_seconds is None else max_seconds - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                break
            item = threads.get(timeout=left)
            done = item is not None and learner.receive(item, max_updates, target_return)
    return time.perf_counter() - t0


def _check(
    env,
    optimizer,
    num_actors,
    num_steps,
    max_updates,
    max_staleness,
    on_stale,
    gamma,
    gae_lambda,
    max_grad_norm,
) -> None:
    if not isinstance(env, Env) and not callable(env):
        raise checks.WrongType(
            "env",
            f"must be a vector jdo.rl.Env (jdo.rl.make_vec_env) or a "
            f"callable actor -> gymnasium vector env, got {env!r}",
        )
    if isinstance(env, Env) and env.num_envs is None:
        raise checks.InvalidArgument(
            "env", f"must be a vector env (jdo.rl.make_vec_env), got the single env {env.name}"
        )
    checks.optimizer("optimizer", optimizer)
    for name, value in (
        ("num_actors", num_actors),
        ("num_steps", num_steps),
        ("max_updates", max_updates),
    ):
        checks.positive_int(name, value)
    if max_staleness is not None:
        checks.non_negative_int("max_staleness", max_staleness)
    checks.one_of("on_stale", on_stale, ON_STALE)
    checks.probability("gamma", gamma)
    checks.probability("gae_lambda", gae_lambda)
    if max_grad_norm is not None:
        checks.positive("max_grad_norm", max_grad_norm)


def async_a3c(
    env: Env | Callable[[int], gym.vector.VectorEnv],
    apply: Callable,
    params,
    optimizer: optax.GradientTransformation,
    *,
    num_actors: int = 4,
    num_steps: int = 16,
    max_updates: int = 10_000,
    max_staleness: int | None = None,
    on_stale: str = "drop",
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    max_grad_norm: float | None = 0.5,
    target_return: float | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    callback: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    r"""Asynchronous advantage actor-critic (Mnih et al. 2016, "Asynchronous Methods for Deep
    Reinforcement Learning"), with actor threads and one learner.

    Actor :math:`i` loops: pull the learner's params :math:`\theta_{v}` (version :math:`v`),
    roll out its own ``N`` env copies for ``num_steps`` steps, compute
    :math:`g = \nabla L(\theta_v)` (:func:`jdo.rl.actor_critic_loss`, n-step returns or
    GAE(λ)), push :math:`(g, v)`. The learner, at version :math:`u`, applies

    .. math:: \theta_{u+1} = \theta_u + \mathrm{opt}(\mathrm{clip}(g)),
              \qquad \text{staleness } s = u - v,

    where the gradient was computed up to :math:`s` versions ago. Bounded staleness
    :math:`\tau` = ``max_staleness``: ``on_stale="drop"`` applies gradients in arrival order
    and discards those with :math:`s > \tau`; ``"wait"`` makes a pull wait while
    :math:`\tau + 1` pulled gradients are still unapplied and applies them in pull order, so
    :math:`s \le \tau` always and none is discarded (:math:`\tau=0`: one actor at a time, i.e.
    sequential A2C). ``None``: unbounded (as in the paper, an actor syncs only after its
    previous gradient has been applied, so staleness is typically about ``num_actors - 1``,
    but a slow actor's gradient can be older).

    The paper's actors apply their gradients to shared params themselves (Hogwild); here one
    learner applies them, so the optimizer state is one consistent optax state.

    Args:
      env: a JAX-native vector env (``jdo.rl.make_vec_env``) of which every actor gets its own
        copy (its own state, reset from its own key); or host environments: a callable
        ``env(actor) -> gymnasium.vector.VectorEnv`` (:func:`jdo.rl.host.make_vector_env`, a
        discrete action space), whose NEXT_STEP reset transitions are masked out of the loss
        (:func:`jdo.rl.host.rollout_loss`); it is also called once with ``num_actors`` for a
        throwaway env to compile on. The envs made here are closed at the end.
      apply: ``apply(params, obs) -> (policy_out, value)`` (``jdo.rl.make_network``).
      params: initial params.
      optimizer: the learner's optax optimizer.
      num_actors: actor threads.
      num_steps: rollout length per gradient.
      max_updates: stop after this many applied updates.
      max_staleness, on_stale: the staleness bound and what to do beyond it.
      gamma, gae_lambda, value_coef, entropy_coef: as :func:`jdo.rl.a2c`.
      max_grad_norm: global-norm clipping of each gradient before the optimizer; None: off.
      target_return: stop once the mean return of the last 100 finished episodes (all actors,
        arrival order) reaches it.
      max_seconds: stop after this wall-clock time.
      callback: ``callback(update, metrics)`` on the host after each applied update.

    Returns:
      ``{"params", "opt_state", "history", "updates", "env_steps", "gradients", "wall_s" (after
      compilation), "compile_s", "dropped", "staleness_histogram", "episode_return",
      "reached_target"}``. ``staleness_histogram[s]`` counts the applied gradients of staleness
      ``s``; ``gradients`` counts those received (applied, dropped, or waiting for their turn
      at the end); ``env_steps`` the env steps behind them (masked reset transitions of host
      envs excluded); ``history`` holds one metrics dict per applied update (``loss``, loss
      terms, ``staleness``, ``episode_return`` (mean of the last 100 finished episodes, 0
      before the first), ``env_steps``, ``dropped``).
    """
    _check(
        env,
        optimizer,
        num_actors,
        num_steps,
        max_updates,
        max_staleness,
        on_stale,
        gamma,
        gae_lambda,
        max_grad_norm,
    )
    loss_args = (gamma, gae_lambda, value_coef, entropy_coef)
    actors, owned = _make_actors(env, apply, num_actors, num_steps, loss_args, seed)
    try:
        step, opt_state, compile_s = _compile(actors.pop(), optimizer, max_grad_norm, params, seed)
        learner = _Learner(step, params, opt_state, num_actors, max_staleness, on_stale, callback)
        wall_s = _run(actors, learner, seed, max_updates, target_return, max_seconds)
    finally:
        for e in owned:
            e.close()
    return learner.result(target_return, wall_s, compile_s)
