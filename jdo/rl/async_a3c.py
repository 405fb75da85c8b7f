"""Genuinely asynchronous A3C: actor threads on one host, each with its own vector env
(JAX-native from ``jdo.rl.envs``, or gymnasium on the host through ``jdo.rl.host``), computing
gradients on the policy version they last pulled and pushing them to a learner that applies
them with an optax optimizer as they arrive.

This is host code (threads, locks, a queue); the device code is two jitted pure functions: the
actors' ``rollout + gradient`` and the learner's ``clip + optimizer`` step. SPMD cannot express
it (workers do not advance in lock-step); :func:`jdo.rl.a3c` is the deterministic,
bounded-staleness SPMD counterpart.

Determinism. Each actor's keys are ``fold_in(fold_in(key, actor), iteration)`` and its
environments are its own, so a gradient is a deterministic function of the params version it
was computed on. What is NOT deterministic with more than one actor is the thread interleaving:
which version each actor pulls, and in ``"drop"``/unbounded mode the order gradients reach the
learner. With ``num_actors=1`` a run is exactly reproducible.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import numpy as np
import optax

from jdo.rl import host
from jdo.rl.a2c import actor_critic_loss, flatten_batch
from jdo.rl.envs import Env
from jdo.rl.networks import make_policy
from jdo.rl.rollout import advantages_of, episode_stats_init, rollout

ON_STALE = ("drop", "wait")


class _Push(NamedTuple):
    actor: int
    ticket: int  # the pull's sequence number (the learner's order in "wait" mode)
    version: int  # params version the gradient was computed on
    grads: Any
    metrics: dict  # loss terms (device scalars)
    returns: np.ndarray  # f32[k]: returns of the episodes that finished in this rollout
    env_steps: int  # env steps behind this gradient


class _Server:
    """The learner's params, their version (applied updates so far), and the gates on pulling.

    An actor pulls again only once its previous gradient has been applied or dropped (as an
    A3C actor-learner applies its gradient before it syncs), so at most ``num_actors``
    gradients are in flight (staleness is still unbounded: a fast actor may have several
    gradients applied while a slow one computes). In
    ``"wait"`` mode a pull also waits while ``max_staleness + 1`` pulled gradients are
    unapplied, and the learner applies gradients in pull order, so a gradient's staleness (the
    updates applied between its pull and its own application) is the number of gradients in
    flight when it was pulled: at most ``max_staleness``."""

    def __init__(self, params, num_actors: int, max_staleness: int | None, on_stale: str):
        self.cond = threading.Condition()
        self.params, self.version = params, 0
        self.tickets = 0
        self.in_flight = 0
        self.outstanding = [False] * num_actors
        self.gate = max_staleness is not None and on_stale == "wait"
        self.limit = None if max_staleness is None else max_staleness + 1
        self.closed = False

    def pull(self, actor: int):
        with self.cond:
            while not self.closed and (
                self.outstanding[actor] or (self.gate and self.in_flight >= self.limit)
            ):
                self.cond.wait(0.1)
            if self.closed:
                return None
            ticket = self.tickets
            self.tickets += 1
            self.in_flight += 1
            self.outstanding[actor] = True
            return self.params, self.version, ticket

    def done(self, actor: int, params=None) -> None:
        """The learner applied (new ``params``: one more version) or dropped (None) the
        actor's gradient."""
        with self.cond:
            if params is not None:
                self.params, self.version = params, self.version + 1
            self.in_flight -= 1
            self.outstanding[actor] = False
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@functools.lru_cache(maxsize=16)
def _device_functions(
    env, apply, optimizer, num_steps, gamma, lam, value_coef, entropy_coef, max_grad_norm
):
    """The jitted device code, cached so that repeated runs with the same env, network and
    hyperparameters (seeds, staleness modes) share their compilations."""
    policy = make_policy(env.action_space)
    tx = optax.chain(
        *([optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []),
        optimizer,
    )

    @jax.jit
    def actor_reset(key):
        obs, env_state = env.reset(key)
        return env_state, obs, episode_stats_init()

    @jax.jit
    def actor_step(params, env_state, obs, episodes, key):
        env_state, obs, traj, episodes = rollout(
            env, policy, apply, params, env_state, obs, key, num_steps, episodes
        )
        adv, ret = advantages_of(traj, apply, params, gamma=gamma, lam=lam)
        batch = flatten_batch(traj, adv, ret)
        loss = lambda p: actor_critic_loss(
            apply, policy, p, batch, value_coef=value_coef, entropy_coef=entropy_coef
        )
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return grads, env_state, obs, episodes, {"loss": value, **aux}

    @jax.jit
    def learner_step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return actor_reset, actor_step, learner_step, tx


@functools.lru_cache(maxsize=16)
def _host_functions(apply, optimizer, gamma, value_coef, entropy_coef, max_grad_norm):
    """The jitted device code for actors on host (gymnasium) environments."""
    tx = optax.chain(
        *([optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm is not None else []),
        optimizer,
    )
    policy = host.categorical_policy(apply)

    @jax.jit
    def gradient(params, rollout):
        loss = lambda p: host.masked_actor_critic_loss(
            apply, p, rollout, gamma=gamma, value_coef=value_coef, entropy_coef=entropy_coef
        )
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return grads, {"loss": value, **aux}

    @jax.jit
    def learner_step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return policy, gradient, learner_step, tx


class _JaxActor:
    """An actor on its own copy of a JAX-native vector env (state kept on the device)."""

    def __init__(self, fns, key, num_steps: int, num_envs: int):
        self.reset, self.step_fn = fns[0], fns[1]
        self.env_state, self.obs, self.episodes = self.reset(key)
        self.per_gradient = num_steps * num_envs

    def gradient(self, params, key):
        count0 = int(self.episodes.count)
        grads, self.env_state, self.obs, self.episodes, metrics = self.step_fn(
            params, self.env_state, self.obs, self.episodes, key
        )
        # The episodes finished in this rollout: the newest entries of the ring.
        count1, window = int(self.episodes.count), self.episodes.returns.shape[0]
        new = min(count1 - count0, window)
        returns = np.asarray(self.episodes.returns)[np.arange(count1 - new, count1) % window]
        return grads, metrics, returns, self.per_gradient


class _GymActor:
    """An actor on its own gymnasium vector env (:class:`jdo.rl.host.HostActor`: reset
    transitions of the NEXT_STEP autoreset are masked out of the loss)."""

    def __init__(self, envs, policy, gradient, num_steps: int, seed: int):
        self.actor = host.HostActor(envs, policy, seed=seed)
        self.gradient_fn, self.num_steps = gradient, num_steps

    def gradient(self, params, key):
        rollout = self.actor.rollout(params, key, self.num_steps)
        rollout = rollout._replace(
            obs=rollout.obs.astype(np.float32),
            next_obs=rollout.next_obs.astype(np.float32),
            actions=rollout.actions.astype(np.int32),
        )
        grads, metrics = self.gradient_fn(params, rollout)
        returns = np.asarray(self.actor.episodes.pop_new(), np.float32)
        return grads, metrics, returns, int(rollout.valid.sum())


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
        discrete action space, n-step returns with ``gae_lambda=1``), whose NEXT_STEP reset
        transitions are masked out of the loss (:class:`jdo.rl.host.HostActor`). The envs
        made here are closed at the end.
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
      compilation), "compile_s", "dropped",
      "staleness_histogram", "episode_return", "reached_target"}``. ``staleness_histogram[s]``
      counts the applied gradients of staleness ``s``; ``gradients`` counts those received
      (applied, dropped, or waiting for their turn at the end); ``env_steps`` counts the env
      steps behind them (masked reset transitions of host envs excluded); ``history`` holds
      one metrics dict per applied update (``loss``, loss terms, ``staleness``,
      ``episode_return``, ``env_steps``, ``dropped``).
    """
    on_host = not isinstance(env, Env)
    if on_host and not callable(env):
        raise ValueError(f"async_a3c: env must be a vector jdo.rl.Env (jdo.rl.make_vec_env) or "
                         f"a callable actor -> gymnasium vector env, got {env!r}")  # fmt: skip
    if not on_host and env.num_envs is None:
        raise ValueError(f"async_a3c: env must be a vector jdo.rl.Env (jdo.rl.make_vec_env), "
                         f"got the single env {env.name}")  # fmt: skip
    if on_host and gae_lambda != 1.0:
        raise ValueError(f"async_a3c: gae_lambda applies to JAX-native envs; host envs use "
                         f"n-step returns (gae_lambda=1.0), got {gae_lambda}")  # fmt: skip
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"async_a3c: optimizer must be an optax.GradientTransformation, "
                         f"got {optimizer!r}")  # fmt: skip
    for name, value in (("num_actors", num_actors), ("num_steps", num_steps),
                        ("max_updates", max_updates)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"async_a3c: {name} must be a positive integer, got {value!r}")
    if max_staleness is not None and (
        isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0
    ):
        raise ValueError(f"async_a3c: max_staleness must be an integer >= 0 or None, "
                         f"got {max_staleness!r}")  # fmt: skip
    if on_stale not in ON_STALE:
        raise ValueError(f"async_a3c: on_stale must be one of {', '.join(ON_STALE)}, "
                         f"got {on_stale!r}")  # fmt: skip
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= gae_lambda <= 1.0:
        raise ValueError(f"async_a3c: gamma and gae_lambda must be in [0, 1], "
                         f"got gamma={gamma}, gae_lambda={gae_lambda}")  # fmt: skip
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"async_a3c: max_grad_norm must be > 0 or None, got {max_grad_norm!r}")

    key = jax.random.key(seed)
    actor_keys = [jax.random.fold_in(key, i) for i in range(num_actors)]
    owned_envs = []
    if on_host:
        policy, gradient, learner_step, tx = _host_functions(
            apply, optimizer, gamma, value_coef, entropy_coef, max_grad_norm
        )
        for i in range(num_actors):
            owned_envs.append(env(i))
        actors = [
            _GymActor(e, policy, gradient, num_steps, seed=seed + 10_000 * i)
            for i, e in enumerate(owned_envs)
        ]
    else:
        fns = _device_functions(
            env, apply, optimizer, num_steps, gamma, gae_lambda, value_coef, entropy_coef,
            max_grad_norm,
        )  # fmt: skip
        learner_step, tx = fns[2], fns[3]
        actors = [
            _JaxActor(fns, jax.random.fold_in(k, 1 << 30), num_steps, env.num_envs)
            for k in actor_keys
        ]

    # -- host: actor threads --------------------------------------------------------------------
    server = _Server(params, num_actors, max_staleness, on_stale)
    pushes: queue.Queue[_Push] = queue.Queue()
    errors: list[BaseException] = []

    def actor_loop(i: int):
        try:
            it = 0
            while True:
                pulled = server.pull(i)
                if pulled is None:
                    return
                p, version, ticket = pulled
                out = actors[i].gradient(p, jax.random.fold_in(actor_keys[i], it))
                it += 1
                pushes.put(_Push(i, ticket, version, *out))
        except BaseException as e:  # surfaced by the learner
            errors.append(e)
            server.close()

    threads = [
        threading.Thread(target=actor_loop, args=(i,), name=f"jdo-a3c-actor-{i}", daemon=True)
        for i in range(num_actors)
    ]

    # -- host: the learner, in the calling thread --------------------------------------------
    # Compile before the clock starts (and once, not once per thread); results discarded.
    t_compile = time.perf_counter()
    opt_state = tx.init(params)
    if on_host:  # a throwaway rollout on a throwaway env: the actors' envs stay untouched
        warm_env = env(num_actors)
        owned_envs.append(warm_env)
        warm = _GymActor(warm_env, policy, gradient, num_steps, seed=seed)
        warm_grads = warm.gradient(params, key)[0]
    else:
        fns = _device_functions(
            env, apply, optimizer, num_steps, gamma, gae_lambda, value_coef, entropy_coef,
            max_grad_norm,
        )  # fmt: skip
        warm_grads = fns[1](params, *fns[0](key), key)[0]
    jax.block_until_ready(learner_step(params, opt_state, warm_grads))
    compile_s = time.perf_counter() - t_compile

    recent: collections.deque[float] = collections.deque(maxlen=100)
    histogram: collections.Counter[int] = collections.Counter()
    history: list[dict] = []
    pending: dict[int, _Push] = {}  # "wait" mode: pushes that arrived before their turn
    next_ticket = 0
    dropped = 0
    env_steps = 0
    received = 0
    reached = False
    ordered = server.gate
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    try:
        while len(history) < max_updates:
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
            try:
                push = pushes.get(timeout=0.1)
            except queue.Empty:
                if errors:
                    raise RuntimeError("an actor thread failed") from errors[0]
                continue
            env_steps += push.env_steps
            received += 1
            recent.extend(push.returns.tolist())
            ready = [push]
            if ordered:  # apply in pull order
                pending[push.ticket] = push
                ready = []
                while next_ticket in pending:
                    ready.append(pending.pop(next_ticket))
                    next_ticket += 1
            for push in ready:
                staleness = server.version - push.version
                if max_staleness is not None and staleness > max_staleness:
                    dropped += 1  # only in "drop" mode: "wait" never lets it happen
                    server.done(push.actor)
                    continue
                params, opt_state = learner_step(params, opt_state, push.grads)
                server.done(push.actor, params)
                histogram[staleness] += 1
                metrics = {k: float(v) for k, v in jax.device_get(push.metrics).items()}
                metrics.update(
                    staleness=float(staleness),
                    episode_return=float(np.mean(recent)) if recent else float("nan"),
                    env_steps=float(env_steps),
                    dropped=float(dropped),
                )
                history.append(metrics)
                if callback is not None:
                    callback(len(history) - 1, metrics)
                if target_return is not None and len(recent) == recent.maxlen:
                    reached = metrics["episode_return"] >= target_return
                if reached or len(history) >= max_updates:
                    break
            if reached:
                break
    finally:
        server.close()
        for th in threads:
            th.join(timeout=30)
        for e in owned_envs:
            e.close()
    if errors:
        raise RuntimeError("an actor thread failed") from errors[0]
    size = max(histogram, default=-1) + 1
    return {
        "params": params,
        "opt_state": opt_state,
        "history": history,
        "updates": len(history),
        "env_steps": env_steps,
        "gradients": received,
        "wall_s": time.perf_counter() - t0,
        "compile_s": compile_s,
        "dropped": dropped,
        "staleness_histogram": np.array([histogram[s] for s in range(size)], np.int64),
        "episode_return": float(np.mean(recent)) if recent else float("nan"),
        "reached_target": reached,
    }
