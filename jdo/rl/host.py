"""Host environments (Sebulba style): gymnasium vector envs on the host, actor threads driving a
jitted policy on the device, one learner consuming their rollouts.

This module is the host side of ``jdo.rl``: threads, queues and gymnasium objects
(:func:`make_vector_env`, :class:`HostActor`, :class:`ParamsServer`, :class:`ActorThreads`,
:func:`sebulba`; :func:`jdo.rl.async_a3c` runs on the same threads). What it hands the device
is jitted and pure: the actors' ``policy(params, obs, key) -> actions``
(:func:`acting_policy`) and the learner's update (:func:`make_learner_update`), a per-worker
function lifted over ``jdo.WORKERS`` (each learner worker takes a slice of the environments,
gradients are all-reduced) that traces :func:`rollout_batch` (GAE, :func:`jdo.rl.gae`) and
:func:`jdo.rl.actor_critic_loss` with the reset transitions masked.

Autoreset. gymnasium 1.x vector envs reset an ended sub-environment by themselves, in one of two
modes, and both are handled:

* ``"next_step"`` (gymnasium's default): the step that ends an episode returns the true final
  observation; the *next* ``step`` ignores its action and returns the reset observation with
  reward 0 and no termination. That reset transition ``(s_final, a, 0, s_reset)`` crosses an
  episode boundary: :class:`Rollout` marks it ``valid=False`` and the loss gives it zero
  weight (its ``mask``).
* ``"same_step"``: the step that ends an episode returns the reset observation, and the true
  final observation is in ``info["final_obs"]``; every transition is valid, and
  :attr:`Rollout.next_obs` holds the final observation so a truncated episode bootstraps from
  the state it was cut in, not from the next episode's first state.

References: Hessel et al. 2021, "Podracer architectures for scalable Reinforcement Learning"
(Sebulba); Espeholt et al. 2018, "IMPALA".
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.lifting import LIFTINGS, lift
from jdo.rl.a2c import actor_critic_loss
from jdo.rl.envs import as_action_space
from jdo.rl.networks import Policy, make_policy
from jdo.rl.rollout import (
    episode_stats_init,
    episode_stats_merge,
    episode_stats_metrics,
    episode_stats_update,
    gae,
)

AUTORESET_MODES = ("next_step", "same_step")
VECTORIZATION_MODES = ("sync", "async")
START_METHODS = ("spawn", "forkserver")
_GYM_MODES = {
    "next_step": gym.vector.AutoresetMode.NEXT_STEP,
    "same_step": gym.vector.AutoresetMode.SAME_STEP,
}

# ----------------------------------------------------------------------------------------------
# Vector environments
# ----------------------------------------------------------------------------------------------


def make_vector_env(
    env: str | Callable[[], gym.Env],
    num_envs: int,
    *,
    vectorization: str = "sync",
    autoreset: str = "next_step",
    context: str = "spawn",
    **env_kwargs,
) -> gym.vector.VectorEnv:
    """A gymnasium vector env of ``num_envs`` copies of ``env`` with the given autoreset mode.

    Args:
      env: a registered gymnasium id (``"CartPole-v1"``) or a zero-argument callable returning a
        ``gymnasium.Env`` (for ``"async"`` it must be picklable: a module-level function or a
        ``functools.partial``).
      num_envs: number of sub-environments.
      vectorization: ``"sync"`` (``SyncVectorEnv``, one process) or ``"async"``
        (``AsyncVectorEnv``, one process per sub-environment).
      autoreset: ``"next_step"`` or ``"same_step"`` (see the module docstring).
      context: the multiprocessing start method for ``"async"``: ``"spawn"`` or
        ``"forkserver"``. ``"fork"`` is refused: forking a process whose JAX runtime has started
        threads can deadlock the child.
      **env_kwargs: passed to ``gymnasium.make`` when ``env`` is an id.
    """
    checks.positive_int("num_envs", num_envs)
    checks.one_of("vectorization", vectorization, VECTORIZATION_MODES)
    checks.one_of("autoreset", autoreset, AUTORESET_MODES)
    checks.one_of("context", context, START_METHODS)
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as e:
            raise checks.InvalidArgument(
                "env", f"{env!r} is not a registered gymnasium id: {e}"
            ) from None
        # A partial of gym.make pickles by reference: a spawned child imports gymnasium only.
        fn = functools.partial(gym.make, env, **env_kwargs)
    elif callable(env):
        if env_kwargs:
            raise checks.InvalidArgument(
                "env_kwargs", "are for a gymnasium id; bind them into the env callable"
            )
        fn = env
    else:
        raise checks.WrongType(
            "env", f"must be a gymnasium id or a callable returning an Env, got {env!r}"
        )
    fns = [fn] * num_envs
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=_GYM_MODES[autoreset])
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=_GYM_MODES[autoreset])


def autoreset_mode(envs: gym.vector.VectorEnv) -> str:
    """The autoreset mode of ``envs`` as ``"next_step"`` or ``"same_step"``; an
    :class:`~jdo.checks.InvalidArgument` for ``DISABLED`` (the actor would have to reset by
    hand) or an unknown mode."""
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    for name, gym_mode in _GYM_MODES.items():
        if mode == gym_mode or mode == gym_mode.value:
            return name
    raise checks.InvalidArgument(
        "envs", f"metadata['autoreset_mode'] must be NEXT_STEP or SAME_STEP, got {mode!r}"
    )


# ----------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------


class Rollout(NamedTuple):
    """``T`` steps of ``N`` sub-environments, time-major numpy arrays ``[T, N, ...]``.

    Transition ``t`` of env ``n`` is ``(obs, action, reward, next_obs)`` with ``next_obs`` the
    true successor state (the final observation when the episode ended at ``t``, whatever the
    autoreset mode). ``valid`` is False for the reset transitions of the ``"next_step"`` mode,
    which cross an episode boundary and must never be learned from.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray  # f32[T, N]
    terminated: np.ndarray  # bool[T, N]: the MDP ended (no bootstrap)
    truncated: np.ndarray  # bool[T, N]: cut by a time limit (bootstrap from next_obs)
    next_obs: np.ndarray
    valid: np.ndarray  # bool[T, N]


class HostActor:
    """Steps one gymnasium vector env with a jitted policy and returns :class:`Rollout` s.

    The actor carries the current observation and, in ``"next_step"`` mode, which
    sub-environments ended on the previous step (their next transition is a reset, invalid) —
    across rollouts, so a rollout may start with a reset transition. Each sub-environment's
    running return and length count valid transitions only.

    Args:
      envs: a gymnasium vector env (see :func:`make_vector_env`).
      policy: ``policy(params, obs, key) -> actions`` for a batch of observations, jitted
        (:func:`acting_policy`).
      seed: seeds the sub-environments (``seed, seed + 1, ...``) at the first reset.

    Attributes:
      episodes: the :class:`~jdo.rl.rollout.EpisodeStats` of every episode finished so far;
        ``last_episodes``: of those finished in the last rollout.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: Callable, *, seed: int = 0):
        self.envs, self.policy = envs, policy
        self.mode = autoreset_mode(envs)
        self.num_envs = envs.num_envs
        self.obs, _ = envs.reset(seed=[seed + i for i in range(self.num_envs)])
        self.prev_done = np.zeros(self.num_envs, bool)
        self.returns = np.zeros(self.num_envs, np.float32)  # of the running episodes
        self.lengths = np.zeros(self.num_envs, np.int32)
        self.episodes = self.last_episodes = episode_stats_init()
        self.env_steps = 0  # valid transitions collected
        self.devices: set = set()  # where the policy ran

    def rollout(self, params, key: jax.Array, num_steps: int) -> Rollout:
        """The next ``num_steps`` steps of every sub-environment under ``policy(params, .)``."""
        cols = {k: [] for k in (*Rollout._fields, "ended", "returns", "lengths")}
        for t in range(num_steps):
            actions = self.policy(params, self.obs, jax.random.fold_in(key, t))
            if isinstance(actions, jax.Array):
                self.devices.update(actions.devices())
            actions = np.asarray(actions)
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
            valid = np.ones(self.num_envs, bool)
            successor = next_obs
            if self.mode == "next_step":
                valid = ~self.prev_done
                self.prev_done = terminated | truncated
            elif "_final_obs" in info:  # same_step: next_obs is already the reset observation
                successor = np.array(next_obs, copy=True)
                for n in np.flatnonzero(info["_final_obs"]):
                    successor[n] = info["final_obs"][n]
            rewards = np.asarray(rewards, np.float32)
            self.returns += np.where(valid, rewards, 0.0).astype(np.float32)
            self.lengths += valid
            ended = valid & (terminated | truncated)
            step = (
                self.obs,
                actions,
                rewards,
                terminated,
                truncated,
                successor,
                valid,
                ended,
                self.returns.copy(),
                self.lengths.copy(),
            )
            for k, v in zip(cols, step, strict=True):
                cols[k].append(np.asarray(v))
            self.returns[ended], self.lengths[ended] = 0.0, 0
            self.env_steps += int(valid.sum())
            self.obs = next_obs
        cols = {k: np.stack(v) for k, v in cols.items()}
        # [T, N] row-major is the order the episodes ended in
        finished = (cols.pop("ended"), cols.pop("returns"), cols.pop("lengths"))
        self.last_episodes = _stats_of(*finished)
        self.episodes = _merge(self.episodes, self.last_episodes)
        return Rollout(**cols)


_stats_of = jax.jit(lambda *finished: episode_stats_update(episode_stats_init(), *finished))
_merge = jax.jit(episode_stats_merge)


def acting_policy(apply: Callable, policy: Policy) -> Callable:
    """``act(params, obs, key) -> actions``, jitted: ``policy.sample`` of ``apply``'s output."""

    @jax.jit
    def act(params, obs, key):
        return policy.sample(key, apply(params, obs)[0])

    return act


# ----------------------------------------------------------------------------------------------
# The learner's batch and update (pure, jitted)
# ----------------------------------------------------------------------------------------------


def rollout_batch(
    apply: Callable, params, rollout: Rollout, *, gamma: float, lam: float = 1.0
) -> dict[str, jax.Array]:
    r"""A time-major rollout ``[T, N]`` as the flat batch of :func:`jdo.rl.actor_critic_loss`:
    GAE(γ, λ) advantages and returns (:func:`jdo.rl.gae`, ``λ=1``: n-step returns) from the
    critic ``params``, episodes cut at ``terminated | truncated``, bootstrapped from
    :math:`V(s'_t)` (``next_obs``) unless terminated, and ``mask = valid`` (the reset
    transitions' targets are meaningless and carry no weight)."""
    t, n = rollout.rewards.shape
    flat = lambda x: x.reshape(t * n, *x.shape[2:])
    values = apply(params, flat(rollout.obs))[1].reshape(t, n)
    next_values = apply(params, flat(rollout.next_obs))[1].reshape(t, n)
    done = jnp.logical_or(rollout.terminated, rollout.truncated)
    adv, ret = gae(
        rollout.rewards, values, next_values, rollout.terminated, done, gamma=gamma, lam=lam
    )
    batch = {
        "obs": rollout.obs,
        "action": rollout.actions,
        "advantage": adv,
        "return": ret,
        "mask": rollout.valid,
    }
    return jax.tree.map(jax.lax.stop_gradient, jax.tree.map(flat, batch))


def rollout_loss(
    apply,
    policy,
    params,
    rollout,
    *,
    gamma,
    lam=1.0,
    value_coef=0.5,
    entropy_coef=0.01,
    normalizer=None,
):
    """:func:`jdo.rl.actor_critic_loss` of :func:`rollout_batch` (reset transitions masked)."""
    batch = rollout_batch(apply, params, rollout, gamma=gamma, lam=lam)
    return actor_critic_loss(
        apply,
        policy,
        params,
        batch,
        value_coef=value_coef,
        entropy_coef=entropy_coef,
        normalizer=normalizer,
    )


def as_arrays(rollout: Rollout) -> Rollout:
    """float32 observations and int32 actions, as the jitted learner takes them."""
    return rollout._replace(
        obs=rollout.obs.astype(np.float32),
        next_obs=rollout.next_obs.astype(np.float32),
        actions=rollout.actions.astype(np.int32),
    )


def make_learner_update(
    apply: Callable,
    policy: Policy,
    optimizer: optax.GradientTransformation,
    *,
    gamma: float,
    gae_lambda: float = 1.0,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    learner_workers: int = 1,
    lifting: str = "vmap",
    mesh=None,
) -> Callable:
    r"""The Sebulba learner: ``update(params, opt_state, rollout) -> (params, opt_state,
    metrics)`` on a whole :class:`Rollout` ``[T, N, ...]`` (numpy), jitted.

    The ``N`` envs are split over ``W = learner_workers`` per-worker learners lifted over
    ``jdo.WORKERS``; worker ``i`` differentiates its masked sums (:func:`rollout_loss`)
    divided by the valid count of all workers together, and the gradients are summed with
    ``psum``, so the update equals one learner's on the whole rollout (to float tolerance) for
    every ``W`` and lifting.
    """
    w = checks.positive_int("learner_workers", learner_workers)
    checks.one_of("lifting", lifting, LIFTINGS)
    loss = functools.partial(
        rollout_loss,
        apply,
        policy,
        gamma=gamma,
        lam=gae_lambda,
        value_coef=value_coef,
        entropy_coef=entropy_coef,
    )

    def worker_update(params, opt_state, rollout):
        total = jax.lax.psum(jnp.sum(rollout.valid.astype(jnp.float32)), WORKERS)
        (value, aux), grads = jax.value_and_grad(
            lambda p: loss(p, rollout, normalizer=total), has_aux=True
        )(params)
        grads = jax.lax.psum(grads, WORKERS)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = jax.lax.psum({"loss": value, **aux}, WORKERS)
        return optax.apply_updates(params, updates), opt_state, metrics

    lifted = lift(worker_update, lifting, mesh=mesh)
    # Each worker gets its own copy of the params (a replicated shard_map input would have its
    # gradient summed over workers implicitly); all copies stay equal: keep worker 0's.
    copies = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (w, *jnp.shape(x))), tree)
    jitted = jax.jit(lambda p, s, r: jax.tree.map(lambda x: x[0], lifted(copies(p), copies(s), r)))

    def shard(x):  # [T, N, ...] -> [W, T, N/W, ...]
        x = x.reshape(x.shape[0], w, x.shape[1] // w, *x.shape[2:])
        return np.moveaxis(x, 1, 0)

    def update(params, opt_state, rollout: Rollout):
        if rollout.rewards.shape[1] % w:
            raise checks.InvalidArgument(
                "learner_workers",
                f"must divide the rollout's {rollout.rewards.shape[1]} envs, got {w}",
            )
        return jitted(params, opt_state, Rollout(*map(shard, as_arrays(rollout))))

    return update


# ----------------------------------------------------------------------------------------------
# Actor threads and a learner (Sebulba here; jdo.rl.async_a3c on the same plumbing)
# ----------------------------------------------------------------------------------------------


class ParamsServer:
    """The learner's params and their version (updates applied so far), pulled by actor
    threads; the learner tells it when it has consumed an actor's item.

    An actor pulls again only once the learner has consumed (applied, batched or dropped) its
    previous item, so each actor has at most one item in flight. With ``max_in_flight``, a
    pull also waits while that many pulled items are unconsumed (A3C's bounded staleness:
    see :func:`jdo.rl.async_a3c`)."""

    def __init__(self, params, num_actors: int, *, max_in_flight: int | None = None):
        self.cond = threading.Condition()
        self.params, self.version = params, 0
        self.tickets = 0  # pulls so far: a pull's ticket is its sequence number
        self.in_flight = 0
        self.outstanding = [False] * num_actors
        self.limit = max_in_flight
        self.closed = False

    def pull(self, actor: int):
        """``(params, version, ticket)`` once the actor may go on; None once closed."""
        with self.cond:
            while not self.closed and (
                self.outstanding[actor] or (self.limit is not None and self.in_flight >= self.limit)
            ):
                self.cond.wait(0.1)
            if self.closed:
                return None
            ticket = self.tickets
            self.tickets += 1
            self.in_flight += 1
            self.outstanding[actor] = True
            return self.params, self.version, ticket

    def publish(self, params) -> None:
        """New params: one more version."""
        with self.cond:
            self.params, self.version = params, self.version + 1

    def consumed(self, actor: int, params=None) -> None:
        """The learner is done with the actor's item; with ``params``, publishes them first
        (atomically: an actor waiting on this releases pulls the new version)."""
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


class Item(NamedTuple):
    """What an actor thread queues: its index, its pull's ticket and params version, and
    whatever its ``produce`` returned."""

    actor: int
    ticket: int
    version: int
    payload: Any


class ActorThreads:
    """One daemon thread per actor, each looping: pull from the :class:`ParamsServer`,
    ``produce(actor, params, key)`` with ``key = fold_in(keys[actor], iteration)``, queue an
    :class:`Item`. A context manager: leaving it closes the server and joins the threads.
    :meth:`get` surfaces an actor's exception in the learner's thread."""

    def __init__(
        self,
        produce: Callable,
        server: ParamsServer,
        keys,
        *,
        queue_size: int = 0,
        name: str = "jdo-actor",
    ):
        self.produce, self.server, self.keys = produce, server, list(keys)
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=queue_size)
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(len(self.keys))
        ]

    def _loop(self, actor: int) -> None:
        try:
            i = 0
            while (pulled := self.server.pull(actor)) is not None:
                params, version, ticket = pulled
                out = self.produce(actor, params, jax.random.fold_in(self.keys[actor], i))
                i += 1
                item = Item(actor, ticket, version, out)
                while not self.server.closed:  # a full queue must not block a closing run
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # surfaced by the learner
            self.errors.append(e)
            self.server.close()

    def __enter__(self) -> ActorThreads:
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()
        for th in self.threads:
            th.join(timeout=30)

    def get(self, timeout: float | None = None) -> Item | None:
        """The next item (None after ``timeout`` seconds); raises if an actor failed."""
        t0 = time.perf_counter()
        while True:
            if self.errors:
                raise RuntimeError("an actor thread failed") from self.errors[0]
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                if timeout is not None and time.perf_counter() - t0 >= timeout:
                    return None


def _check_sebulba(
    envs,
    optimizer,
    num_updates,
    num_steps,
    gamma,
    gae_lambda,
    learner_workers,
    lifting,
    queue_size,
    actor_device,
) -> int:
    """The argument checks of :func:`sebulba`; returns the total env count."""
    if isinstance(envs, gym.vector.VectorEnv) or not isinstance(envs, Sequence):
        raise checks.WrongType(
            "envs", f"must be a sequence of vector envs, one per actor, got {envs!r}"
        )
    if not envs:
        raise checks.InvalidArgument("envs", "must not be empty (one vector env per actor)")
    checks.optimizer("optimizer", optimizer)
    for name, value in (
        ("num_updates", num_updates),
        ("num_steps", num_steps),
        ("learner_workers", learner_workers),
    ):
        checks.positive_int(name, value)
    checks.probability("gamma", gamma)
    checks.probability("gae_lambda", gae_lambda)
    checks.one_of("lifting", lifting, LIFTINGS)
    if queue_size is not None:
        checks.positive_int("queue_size", queue_size)
    if actor_device is not None and not isinstance(actor_device, jax.Device):
        raise checks.WrongType(
            "actor_device", f"must be a jax.Device or None, got {actor_device!r}"
        )
    sizes = {e.num_envs for e in envs}
    if len(sizes) != 1:
        raise checks.InvalidArgument("envs", f"must all have the same num_envs, got {sizes}")
    total = len(envs) * sizes.pop()
    if total % learner_workers:
        raise checks.InvalidArgument(
            "learner_workers", f"must divide the total env count {total}, got {learner_workers}"
        )
    return total


def _on_device(params, device: jax.Device | None):
    """``params`` copied to ``device`` (None: as they are)."""
    return params if device is None else jax.device_put(params, device)


def _sebulba_actors(envs, apply, policy, seed, num_steps):
    """:func:`sebulba`'s actors (one :class:`HostActor` per vector env), their ``produce``
    for :class:`ActorThreads` (a rollout and the episodes it finished) and their keys."""
    act = acting_policy(apply, policy)
    actors = [HostActor(e, act, seed=seed + 10_000 * i) for i, e in enumerate(envs)]

    def produce(i, p, key):
        rollout = actors[i].rollout(p, key, num_steps)
        return rollout, actors[i].last_episodes

    key = jax.random.key(seed)
    keys = [jax.random.fold_in(key, i) for i in range(len(actors))]
    return actors, produce, keys


def _sebulba_learn(threads, server, update, params, opt_state, num_updates, actor_device, callback):
    """:func:`sebulba`'s learner loop: each update takes one rollout per actor (in actor
    order), learns on their concatenation and publishes the new params; returns
    ``{"params", "opt_state", "history", "env_steps"}``."""
    history, stats, env_steps = [], episode_stats_init(), 0
    for u in range(num_updates):
        # one item per actor (one thread each), in actor order
        items = sorted((threads.get() for _ in threads.threads), key=lambda it: it.actor)
        version = server.version
        for it in items:  # each actor may roll out again (with this version) meanwhile
            server.consumed(it.actor)
            stats = _merge(stats, it.payload[1])
            env_steps += int(it.payload[0].valid.sum())
        rollouts = [it.payload[0] for it in items]
        batch = Rollout(*(np.concatenate(f, axis=1) for f in zip(*rollouts, strict=True)))
        params, opt_state, metrics = update(params, opt_state, batch)
        server.publish(_on_device(params, actor_device))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["episode_return"] = float(episode_stats_metrics(stats)["episode_return"])
        metrics["env_steps"] = float(env_steps)  # learned from (valid) so far
        metrics["policy_lag"] = float(np.mean([version - it.version for it in items]))
        history.append(metrics)
        if callback is not None:
            callback(u, metrics)
    return {"params": params, "opt_state": opt_state, "history": history, "env_steps": env_steps}


def sebulba(
    envs: Sequence[gym.vector.VectorEnv],
    apply: Callable,
    params,
    optimizer: optax.GradientTransformation,
    *,
    num_updates: int,
    num_steps: int = 16,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    learner_workers: int = 1,
    lifting: str = "vmap",
    mesh=None,
    queue_size: int | None = None,
    actor_device: jax.Device | None = None,
    seed: int = 0,
    callback: Callable[[int, dict], None] | None = None,
) -> dict[str, Any]:
    r"""Trains an actor-critic with host actors and a data-parallel learner (Sebulba).

    One host thread per vector env in ``envs`` (:class:`ActorThreads`) repeatedly reads the
    latest params, rolls its envs out for ``num_steps`` steps with a jitted policy on the
    device (:func:`acting_policy`), and queues the :class:`Rollout`. Each update, the learner
    takes one rollout from each actor, concatenates them along the env axis in actor order,
    splits the envs over ``learner_workers`` per-worker learners, and applies the all-reduced
    gradient of :func:`rollout_loss` (A2C, Mnih et al. 2016; GAE(λ), ``gae_lambda=1``: n-step
    returns) with ``optimizer``:

    .. math:: g = \frac{1}{W}\sum_{i=1}^{W}\nabla L(\theta; \text{envs of worker } i), \qquad
              \theta \leftarrow \theta + \mathrm{opt}(g).

    Actors act with the params of the version they last read, at most one update behind the
    learner; the loss ignores that small policy lag, as synchronous A2C does. ``policy_lag`` in
    the metrics reports it. Host threads: the actors; the learner runs in the calling thread.

    Determinism: each actor's keys and env seeds are fixed by ``seed``, and the learner batches
    rollouts in actor order; the params version each rollout was acted with depends on thread
    timing, so two runs agree only in distribution.

    Reference: Hessel et al. 2021, "Podracer architectures for scalable Reinforcement
    Learning" (Sebulba).

    Args:
      envs: one gymnasium vector env per actor thread (``"next_step"`` or ``"same_step"``
        autoreset, discrete actions), all with the same number of sub-environments.
      apply: ``apply(params, obs[B, ...]) -> (logits[B, A], value[B])``.
      params: initial params.
      optimizer: any optax transformation.
      num_updates: learner updates to run.
      num_steps: rollout length per actor per update.
      learner_workers: W, the learner's workers (the concatenated env count must divide by W).
      lifting: ``"vmap"`` or ``"shard_map"`` (needs ``mesh`` with a ``workers`` axis of size W).
      queue_size: rollouts the queue holds (default: one per actor).
      actor_device: the device the actors' policy runs on (each new params version is copied
        there), apart from the learner's devices (``mesh``) as in Sebulba; None: the default
        device.
      callback: ``callback(update, metrics)`` on the host after each update.

    Returns:
      ``{"params", "opt_state", "history": [metrics per update], "env_steps", "wall_s",
      "actor_devices"}`` (``actor_devices``: the devices the policy ran on); the
      metrics hold ``loss``, ``episode_return`` (mean of the last 100 finished episodes over all
      actors, 0 before the first), ``env_steps`` (valid transitions so far) and ``policy_lag``.
    """
    _check_sebulba(
        envs,
        optimizer,
        num_updates,
        num_steps,
        gamma,
        gae_lambda,
        learner_workers,
        lifting,
        queue_size,
        actor_device,
    )
    policy = make_policy(as_action_space(envs[0].single_action_space))
    update = make_learner_update(
        apply,
        policy,
        optimizer,
        gamma=gamma,
        gae_lambda=gae_lambda,
        value_coef=value_coef,
        entropy_coef=entropy_coef,
        learner_workers=learner_workers,
        lifting=lifting,
        mesh=mesh,
    )
    actors, produce, keys = _sebulba_actors(envs, apply, policy, seed, num_steps)
    server = ParamsServer(_on_device(params, actor_device), len(actors))
    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    with ActorThreads(produce, server, keys, queue_size=queue_size or len(actors)) as threads:
        out = _sebulba_learn(
            threads, server, update, params, opt_state, num_updates, actor_device, callback
        )
    return {
        **out,
        "wall_s": time.perf_counter() - t0,
        "actor_devices": set().union(*(a.devices for a in actors)),
    }
