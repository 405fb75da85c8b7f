"""Host environments (Sebulba style): gymnasium vector envs on the host, actor threads driving a
jitted policy on the device, one learner consuming their rollouts.

This module is the host side of ``jdo.rl``: it owns threads, queues and gymnasium objects, and
nothing here is traced. The device side is two pure, jitted functions: the actors'
``policy(params, obs, key) -> actions`` and the learner's update, a per-worker function lifted
over ``jdo.WORKERS`` (each learner worker takes a slice of the environments, gradients are
all-reduced).

Autoreset. gymnasium 1.x vector envs reset an ended sub-environment by themselves, in one of two
modes, and both are handled:

* ``"next_step"`` (gymnasium's default): the step that ends an episode returns the true final
  observation; the *next* ``step`` ignores its action and returns the reset observation with
  reward 0 and no termination. That reset transition ``(s_final, a, 0, s_reset)`` crosses an
  episode boundary: :class:`Rollout` marks it ``valid=False`` and every loss here gives it zero
  weight.
* ``"same_step"``: the step that ends an episode returns the reset observation, and the true
  final observation is in ``info["final_obs"]``; every transition is valid, and
  :attr:`Rollout.next_obs` holds the final observation so a truncated episode bootstraps from
  the state it was cut in, not from the next episode's first state.

References: Hessel et al. 2021, "Podracer architectures for scalable Reinforcement Learning"
(Sebulba); Espeholt et al. 2018, "IMPALA".
"""

from __future__ import annotations

import collections
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

from jdo._axis import WORKERS
from jdo.lifting import LIFTINGS, lift

AUTORESET_MODES = ("next_step", "same_step")
VECTORIZATION_MODES = ("sync", "async")
START_METHODS = ("spawn", "forkserver")
_GYM_MODES = {
    "next_step": gym.vector.AutoresetMode.NEXT_STEP,
    "same_step": gym.vector.AutoresetMode.SAME_STEP,
}


def _check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
    _check_positive("num_envs", num_envs)
    _check_choice("vectorization", vectorization, VECTORIZATION_MODES)
    _check_choice("autoreset", autoreset, AUTORESET_MODES)
    _check_choice("context", context, START_METHODS)
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as e:
            raise ValueError(f"env {env!r} is not a registered gymnasium id: {e}") from None
        # A partial of gym.make pickles by reference: a spawned child imports gymnasium only.
        fn = functools.partial(gym.make, env, **env_kwargs)
    elif callable(env):
        if env_kwargs:
            raise ValueError("env_kwargs are for a gymnasium id; bind them into the env callable")
        fn = env
    else:
        raise ValueError(f"env must be a gymnasium id or a callable returning an Env, got {env!r}")
    fns = [fn] * num_envs
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=_GYM_MODES[autoreset])
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=_GYM_MODES[autoreset])


def autoreset_mode(envs: gym.vector.VectorEnv) -> str:
    """The autoreset mode of ``envs`` as ``"next_step"`` or ``"same_step"``; a ``ValueError``
    for ``DISABLED`` (the actor would have to reset by hand) or an unknown mode."""
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    for name, gym_mode in _GYM_MODES.items():
        if mode == gym_mode or mode == gym_mode.value:
            return name
    raise ValueError(
        f"envs.metadata['autoreset_mode'] must be NEXT_STEP or SAME_STEP, got {mode!r}"
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


class EpisodeTracker:
    """Returns and lengths of finished episodes, counted over valid transitions only."""

    def __init__(self, num_envs: int, window: int = 100):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.finished: collections.deque[tuple[float, int]] = collections.deque(maxlen=window)
        self.count = 0
        self._seen = 0

    def update(self, rewards, terminated, truncated, valid) -> None:
        self.returns += np.where(valid, rewards, 0.0)
        self.lengths += valid
        for n in np.flatnonzero(valid & (terminated | truncated)):
            self.finished.append((float(self.returns[n]), int(self.lengths[n])))
            self.returns[n], self.lengths[n] = 0.0, 0
            self.count += 1

    def pop_new(self) -> list[float]:
        """Returns of the episodes finished since the last call."""
        new = min(self.count - self._seen, len(self.finished))  # the window may have dropped some
        self._seen = self.count
        return [r for r, _ in list(self.finished)[len(self.finished) - new :]]

    def mean_return(self) -> float:
        """Mean return of the last ``window`` finished episodes (NaN before the first)."""
        return float(np.mean([r for r, _ in self.finished])) if self.finished else float("nan")


class HostActor:
    """Steps one gymnasium vector env with a jitted policy and returns :class:`Rollout` s.

    The actor carries the current observation and, in ``"next_step"`` mode, which
    sub-environments ended on the previous step (their next transition is a reset, invalid) —
    across rollouts, so a rollout may start with a reset transition.

    Args:
      envs: a gymnasium vector env (see :func:`make_vector_env`).
      policy: ``policy(params, obs, key) -> actions`` for a batch of observations, jitted.
      seed: seeds the sub-environments (``seed, seed + 1, ...``) at the first reset.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: Callable, *, seed: int = 0):
        self.envs, self.policy = envs, policy
        self.mode = autoreset_mode(envs)
        self.num_envs = envs.num_envs
        self.obs, _ = envs.reset(seed=[seed + i for i in range(self.num_envs)])
        self.prev_done = np.zeros(self.num_envs, bool)
        self.episodes = EpisodeTracker(self.num_envs)
        self.env_steps = 0  # valid transitions collected
        self.devices: set = set()  # where the policy ran

    def rollout(self, params, key: jax.Array, num_steps: int) -> Rollout:
        """The next ``num_steps`` steps of every sub-environment under ``policy(params, .)``.

        Returns of episodes that finished meanwhile: ``self.episodes.pop_new()``."""
        cols = {k: [] for k in Rollout._fields}
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
            self.episodes.update(rewards, terminated, truncated, valid)
            self.env_steps += int(valid.sum())
            for k, v in zip(
                Rollout._fields,
                (self.obs, actions, rewards, terminated, truncated, successor, valid),
                strict=True,
            ):
                cols[k].append(np.asarray(v))
            self.obs = next_obs
        return Rollout(**{k: np.stack(v) for k, v in cols.items()})


# ----------------------------------------------------------------------------------------------
# Masked n-step actor-critic loss (pure; what the learner differentiates)
# ----------------------------------------------------------------------------------------------


def masked_returns(
    rewards: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
) -> jax.Array:
    r"""n-step returns of a time-major rollout ``[T, N]`` that never look across an episode end.

    .. math:: G_t = r_t + \gamma (1 - d^{term}_t)
              \begin{cases} G_{t+1} & \text{episode continues and } t < T-1 \\
                            V(s'_t) & \text{otherwise} \end{cases}

    with :math:`s'_t` the true successor (``next_obs``), so a truncated episode bootstraps from
    its last state and a terminated one from nothing. ``G`` of an invalid (reset) transition is
    meaningless: it must be masked by the caller, as :func:`masked_actor_critic_loss` does.
    """
    ended = jnp.logical_or(terminated, truncated)

    def back(g_next, xs):
        r, v_next, term, end = xs
        follow = jnp.where(end, v_next, g_next)
        g = r + gamma * (1.0 - term) * follow
        return g, g

    _, g = jax.lax.scan(
        back,
        next_values[-1],  # t = T - 1 bootstraps from V(s'_{T-1})
        (rewards, next_values, terminated.astype(rewards.dtype), ended),
        reverse=True,
    )
    return g


def masked_actor_critic_loss(
    apply: Callable,
    params,
    rollout: Rollout,
    *,
    gamma: float,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    normalizer: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The A2C loss (Mnih et al. 2016) of a :class:`Rollout` with invalid transitions masked.

    With :math:`m_t` the valid mask, :math:`A_t = G_t - V(s_t)` (:func:`masked_returns`),

    .. math:: L = \frac{1}{\sum m}\sum_t m_t\Big[-\log\pi(a_t|s_t)\,\mathrm{sg}(A_t)
              + \tfrac{c_v}{2} A_t^2 - c_e\,H(\pi(\cdot|s_t))\Big].

    Args:
      apply: ``apply(params, obs[B, ...]) -> (logits[B, A], value[B])``.
      rollout: one rollout (or one learner worker's slice of it), as arrays.
      normalizer: what to divide the masked sums by instead of this rollout's valid count
        (the valid count of all learner workers together, so that their summed gradients are
        the gradient of the whole batch's loss).
    """
    t, n = rollout.rewards.shape
    flat = lambda x: x.reshape(t * n, *x.shape[2:])
    logits, values = apply(params, flat(rollout.obs))
    _, next_values = apply(params, flat(rollout.next_obs))
    values, next_values = values.reshape(t, n), jax.lax.stop_gradient(next_values.reshape(t, n))
    logits = logits.reshape(t, n, -1)
    returns = masked_returns(
        rollout.rewards, next_values, rollout.terminated, rollout.truncated, gamma
    )
    adv = returns - values
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, rollout.actions[..., None].astype(jnp.int32), -1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    mask = rollout.valid.astype(values.dtype)
    denom = jnp.maximum(jnp.sum(mask) if normalizer is None else normalizer, 1.0)
    mean = lambda x: jnp.sum(mask * x) / denom
    pg = mean(-logp * jax.lax.stop_gradient(adv))
    vf = mean(0.5 * jnp.square(adv))
    ent = mean(entropy)
    loss = pg + value_coef * vf - entropy_coef * ent
    return loss, {"policy_loss": pg, "value_loss": vf, "entropy": ent}


def categorical_policy(apply: Callable) -> Callable:
    """``policy(params, obs, key) -> actions`` sampling from ``apply``'s logits, jitted."""

    @jax.jit
    def policy(params, obs, key):
        logits, _ = apply(params, obs)
        return jax.random.categorical(key, logits)

    return policy


# ----------------------------------------------------------------------------------------------
# Sebulba: actor threads -> queue -> learner
# ----------------------------------------------------------------------------------------------


def make_learner_update(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    *,
    gamma: float,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    learner_workers: int = 1,
    lifting: str = "vmap",
    mesh=None,
) -> Callable:
    r"""The Sebulba learner: ``update(params, opt_state, rollout) -> (params, opt_state,
    metrics)`` on a whole :class:`Rollout` ``[T, N, ...]`` (numpy), jitted.

    The ``N`` envs are split over ``W = learner_workers`` per-worker learners lifted over
    ``jdo.WORKERS``; worker ``i`` differentiates its masked sums divided by the valid count of
    all workers together, and the gradients are summed with ``psum``, so the update equals one
    learner's on the whole rollout (to float tolerance) for every ``W`` and lifting.
    """
    _check_positive("learner_workers", learner_workers)
    _check_choice("lifting", lifting, LIFTINGS)

    def worker_update(params, opt_state, rollout):
        total = jax.lax.psum(jnp.sum(rollout.valid.astype(jnp.float32)), WORKERS)
        (loss, aux), grads = jax.value_and_grad(masked_actor_critic_loss, argnums=1, has_aux=True)(
            apply, params, rollout, gamma=gamma, value_coef=value_coef,
            entropy_coef=entropy_coef, normalizer=total,
        )  # fmt: skip
        grads = jax.lax.psum(grads, WORKERS)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = jax.lax.psum({"loss": loss, **aux}, WORKERS)
        return optax.apply_updates(params, updates), opt_state, metrics

    lifted = lift(worker_update, lifting, mesh=mesh)
    # Each worker gets its own copy of the params (a replicated shard_map input would have its
    # gradient summed over workers implicitly); all copies stay equal: keep worker 0's.
    copies = lambda tree: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (learner_workers, *jnp.shape(x))), tree
    )
    jitted = jax.jit(lambda p, s, r: jax.tree.map(lambda x: x[0], lifted(copies(p), copies(s), r)))

    def shard(rollout: Rollout) -> Rollout:  # [T, N, ...] -> [W, T, N/W, ...]
        def one(x):
            t, n = x.shape[:2]
            x = x.reshape(t, learner_workers, n // learner_workers, *x.shape[2:])
            return np.moveaxis(x, 1, 0)

        rollout = rollout._replace(
            obs=rollout.obs.astype(np.float32),
            next_obs=rollout.next_obs.astype(np.float32),
            actions=rollout.actions.astype(np.int32),
        )
        return Rollout(*(one(x) for x in rollout))

    def update(params, opt_state, rollout: Rollout):
        if rollout.rewards.shape[1] % learner_workers:
            raise ValueError(f"learner_workers={learner_workers} must divide the rollout's "
                             f"{rollout.rewards.shape[1]} envs")  # fmt: skip
        return jitted(params, opt_state, shard(rollout))

    return update


class ParamsStore:
    """The learner's latest params and their version, read by actor threads under a lock."""

    def __init__(self, params):
        self._lock = threading.Lock()
        self._params, self._version = params, 0

    def get(self):
        with self._lock:
            return self._params, self._version

    def put(self, params) -> int:
        with self._lock:
            self._params, self._version = params, self._version + 1
            return self._version


class _ActorThread(threading.Thread):
    def __init__(self, actor, store, out, stop, key, num_steps, index):
        super().__init__(name=f"jdo-actor-{index}", daemon=True)
        self.actor, self.store, self.out, self.stop = actor, store, out, stop
        self.key, self.num_steps, self.index = key, num_steps, index
        self.error: BaseException | None = None

    def run(self):
        try:
            i = 0
            while not self.stop.is_set():
                params, version = self.store.get()
                rollout = self.actor.rollout(
                    params, jax.random.fold_in(self.key, i), self.num_steps
                )
                i += 1
                item = (self.index, version, rollout, self.actor.episodes.pop_new())
                while not self.stop.is_set():
                    try:
                        self.out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # surfaced by the learner
            self.error = e
            self.stop.set()


def sebulba(
    envs: Sequence[gym.vector.VectorEnv],
    apply: Callable,
    params,
    optimizer: optax.GradientTransformation,
    *,
    num_updates: int,
    num_steps: int = 16,
    gamma: float = 0.99,
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

    One host thread per vector env in ``envs`` repeatedly reads the latest params, rolls its
    envs out for ``num_steps`` steps with a jitted categorical policy on the device, and queues
    the :class:`Rollout`. Each update, the learner takes one rollout from each actor (in arrival
    order), concatenates them along the env axis, splits the envs over ``learner_workers``
    per-worker learners, and applies the all-reduced gradient of
    :func:`masked_actor_critic_loss` (A2C, Mnih et al. 2016) with ``optimizer``:

    .. math:: g = \frac{1}{W}\sum_{i=1}^{W}\nabla L(\theta; \text{envs of worker } i), \qquad
              \theta \leftarrow \theta + \mathrm{opt}(g).

    Actors act with the params of the version they last read, at most one or two updates
    behind the learner (the queue holds ``queue_size`` rollouts, default one per actor); the
    loss ignores that small policy lag, as synchronous A2C does. ``policy_lag`` in the metrics
    reports it. Host threads: the actors; the learner runs in the calling thread.

    Determinism: each actor's keys and env seeds are fixed by ``seed``, and the learner batches
    rollouts in actor order; the params version each rollout was acted with depends on thread
    timing, so two runs agree only in distribution.

    Reference: Hessel et al. 2021, "Podracer architectures for scalable Reinforcement
    Learning" (Sebulba).

    Args:
      envs: one gymnasium vector env per actor thread (``"next_step"`` or ``"same_step"``
        autoreset), all with the same number of sub-environments.
      apply: ``apply(params, obs[B, ...]) -> (logits[B, A], value[B])``.
      params: initial params.
      optimizer: any optax transformation.
      num_updates: learner updates to run.
      num_steps: rollout length per actor per update.
      learner_workers: W, the learner's workers (the concatenated env count must divide by W).
      lifting: ``"vmap"`` or ``"shard_map"`` (needs ``mesh`` with a ``workers`` axis of size W).
      actor_device: the device the actors' policy runs on (each new params version is copied
        there), apart from the learner's devices (``mesh``) as in Sebulba; None: the default
        device.
      callback: ``callback(update, metrics)`` on the host after each update.

    Returns:
      ``{"params", "opt_state", "history": [metrics per update], "env_steps", "wall_s",
      "actor_devices"}`` (``actor_devices``: the devices the policy ran on); the
      metrics hold ``loss``, ``episode_return`` (mean of the last 100 finished episodes over all
      actors), ``env_steps`` (valid transitions so far) and ``policy_lag``.
    """
    if isinstance(envs, gym.vector.VectorEnv) or not envs:
        raise ValueError("envs must be a non-empty sequence of vector envs, one per actor")
    _check_positive("num_updates", num_updates)
    _check_positive("num_steps", num_steps)
    _check_positive("learner_workers", learner_workers)
    _check_choice("lifting", lifting, LIFTINGS)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if queue_size is not None:
        _check_positive("queue_size", queue_size)
    if actor_device is not None and not isinstance(actor_device, jax.Device):
        raise ValueError(f"actor_device must be a jax.Device or None, got {actor_device!r}")
    sizes = {e.num_envs for e in envs}
    if len(sizes) != 1:
        raise ValueError(f"every actor's vector env must have the same num_envs, got {sizes}")
    total_envs = len(envs) * sizes.pop()
    if total_envs % learner_workers:
        raise ValueError(
            f"learner_workers={learner_workers} must divide the total env count {total_envs}"
        )
    num_actors = len(envs)

    update = make_learner_update(
        apply, optimizer, gamma=gamma, value_coef=value_coef, entropy_coef=entropy_coef,
        learner_workers=learner_workers, lifting=lifting, mesh=mesh,
    )  # fmt: skip

    # -- the actors --------------------------------------------------------------------------
    policy = categorical_policy(apply)
    to_actors = (lambda p: jax.device_put(p, actor_device)) if actor_device is not None else None
    store = ParamsStore(params if to_actors is None else to_actors(params))
    stop = threading.Event()
    rollouts: queue.Queue = queue.Queue(maxsize=queue_size if queue_size else num_actors)
    key = jax.random.key(seed)
    actors = [HostActor(e, policy, seed=seed + 10_000 * i) for i, e in enumerate(envs)]
    threads = [
        _ActorThread(a, store, rollouts, stop, jax.random.fold_in(key, i), num_steps, i)
        for i, a in enumerate(actors)
    ]
    opt_state = optimizer.init(params)
    history: list[dict] = []
    recent: collections.deque[float] = collections.deque(maxlen=100)
    env_steps = 0
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    try:
        for u in range(num_updates):
            items = []
            while len(items) < num_actors:
                try:
                    items.append(rollouts.get(timeout=0.1))
                except queue.Empty:
                    for th in threads:
                        if th.error is not None:
                            raise RuntimeError(f"actor {th.index} failed") from th.error
            items.sort(key=lambda it: it[0])  # by actor: the learner's env order
            batch = Rollout(
                *(
                    np.concatenate([getattr(it[2], f) for it in items], axis=1)
                    for f in Rollout._fields
                )
            )
            for it in items:
                recent.extend(it[3])
                env_steps += int(it[2].valid.sum())
            version = store.get()[1]
            params, opt_state, metrics = update(params, opt_state, batch)
            store.put(params if to_actors is None else to_actors(params))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            metrics["episode_return"] = float(np.mean(recent)) if recent else float("nan")
            metrics["env_steps"] = float(env_steps)  # learned from (valid) so far
            metrics["policy_lag"] = float(np.mean([version - it[1] for it in items]))
            history.append(metrics)
            if callback is not None:
                callback(u, metrics)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    return {
        "params": params,
        "opt_state": opt_state,
        "history": history,
        "env_steps": env_steps,
        "wall_s": time.perf_counter() - t0,
        "actor_devices": set().union(*(a.devices for a in actors)),
    }
