"""Reinforcement-learning runs: ``build_rl(cfg)`` for the Hydra runner (``task.kind: rl``), and
``train_until(config, target)``, which trains an Anakin config in jitted chunks and evaluates
fresh episodes after each until a target return is reached (steps and seconds to solve).

    python -m experiments.train task=cartpole algorithm=ppo workers=8
    python -m experiments.train task=cartpole algorithm=decentralized_ppo topology=ring
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from jdo._axis import WORKERS
from jdo.lifting import lift
from jdo.models import functional
from jdo.rl import evaluate_policy, make_train, make_vec_env
from jdo.train.config import ConfigError
from jdo.train.runner import Experiment, _factory_parameters, _instantiate

TASK_KEYS = ("kind", "env", "num_envs", "env_params", "normalize_obs", "normalize_reward_gamma")


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_rl(cfg: Mapping) -> Experiment:
    """Environment (``cfg.task``), actor-critic network (``cfg.model``), optimizer and RL
    algorithm (``cfg.algorithm``, a ``jdo.rl`` factory) as an :class:`Experiment` without data:
    the runner passes ``batch=None`` and each worker rolls out its own environments."""
    task = _plain(cfg["task"])
    unknown = sorted(set(task) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"task.{unknown[0]}", f"unknown key; allowed keys: "
                          f"{', '.join(sorted(TASK_KEYS))}")  # fmt: skip
    workers, seed = int(cfg["workers"]), int(cfg["seed"])
    num_envs = task.get("num_envs", 1)
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError("task.num_envs", f"must be a positive integer, got {num_envs!r}")
    env_params = task.get("env_params") or {}
    if not isinstance(env_params, Mapping):
        raise ConfigError("task.env_params", f"must be a mapping, got {env_params!r}")
    normalize_obs = task.get("normalize_obs", False)
    if not isinstance(normalize_obs, bool):
        raise ConfigError("task.normalize_obs", f"must be true or false, got {normalize_obs!r}")
    try:
        env = make_vec_env(task.get("env"), num_envs, normalize_obs=normalize_obs,
                           normalize_reward_gamma=task.get("normalize_reward_gamma"),
                           **env_params)  # fmt: skip
    except (ValueError, TypeError) as e:
        key = "task.env_params" if "parameter" in str(e) else "task.env"
        if "gamma" in str(e):
            key = "task.normalize_reward_gamma"
        raise ConfigError(key, str(e)) from None
    target = str(cfg["algorithm"].get("_target_", ""))
    if not target.startswith("jdo.rl."):
        raise ConfigError("algorithm", f"an RL task needs an RL algorithm (a2c, a3c, ppo, "
                          f"decentralized_ppo, ...), got _target_={target!r}")  # fmt: skip
    model = _instantiate(cfg["model"], "model", obs_size=env.observation_size,
                         action_space=env.action_space, rngs=nnx.Rngs(seed))  # fmt: skip
    apply, params = functional(model)
    optimizer = _instantiate(cfg["optimizer"], "optimizer")
    extra, accepted = {}, _factory_parameters(cfg["algorithm"], "algorithm")
    if "topology" in accepted and cfg["algorithm"].get("communication") == "gossip":
        topology = _instantiate(cfg["topology"], "topology")
        if topology.n != workers:
            raise ConfigError("topology.n", f"must equal workers ({workers}), got {topology.n}")
        extra["topology"] = topology
    algorithm = _instantiate(
        cfg["algorithm"], "algorithm", env=env, apply=apply, optimizer=optimizer, **extra
    )
    try:
        jax.eval_shape(algorithm.init, params, jax.random.key(0))
    except ValueError as e:
        raise ConfigError("algorithm", str(e)) from None
    return Experiment(algorithm, apply, None, params, None, None)


def train_until(
    config: Mapping[str, Any],
    *,
    target: float,
    seed: int = 0,
    eval_every: int = 10,
    max_updates: int = 1000,
    eval_episodes: int = 100,
    lifting: str = "vmap",
    mesh=None,
) -> dict[str, Any]:
    """Trains the :func:`jdo.rl.make_train` ``config`` in jitted chunks of ``eval_every``
    updates; after each chunk, evaluates EVERY worker's policy on ``eval_episodes`` fresh
    episodes (sampled actions) and stops once the worst worker's mean return is ``>= target``.

    Returns a dict: ``solved``, ``updates``, ``env_steps`` (all workers), ``train_s`` (device
    time of the training chunks, compile and evaluation excluded), ``compile_s``,
    ``eval_returns`` (``[workers]`` means at the stop), ``curve`` (one row per chunk:
    ``env_steps``, worst and mean evaluation return, the training ``episode_return``), and the
    final stacked ``state``.
    """
    if eval_every < 1 or max_updates < eval_every:
        raise ValueError(f"train_until: need 1 <= eval_every <= max_updates, got "
                         f"eval_every={eval_every}, max_updates={max_updates}")  # fmt: skip
    if config.get("normalize_obs"):
        raise ValueError("train_until evaluates raw observations: normalize_obs is not supported")
    train = make_train({**config, "updates": max_updates})
    algo, workers = train.algorithm, int(train.config["workers"])
    env_name = train.env.name
    env_params = dict(train.config["env_params"])

    def worker_chunk(state, key, t0):
        def body(s, t):
            k = jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index(WORKERS)), t)
            return algo.step(s, None, k)

        return jax.lax.scan(body, state, t0 + jnp.arange(eval_every))

    chunk = jax.jit(lift(worker_chunk, lifting, mesh=mesh, in_axes=(0, None, None)))
    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    evaluate = jax.jit(jax.vmap(
        lambda p, k: evaluate_policy(env_name, train.apply, p, k, num_episodes=eval_episodes,
                                     env_params=env_params),
        in_axes=(0, None),
    ))  # fmt: skip
    key = jax.random.key(seed)
    init_key, run_key, eval_key = jax.random.split(key, 3)
    t0 = time.perf_counter()
    state = init(train.params, jax.random.split(init_key, workers))
    compiled = chunk.lower(state, run_key, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    curve, train_s, updates, returns, solved = [], 0.0, 0, None, False
    while updates < max_updates:
        t0 = time.perf_counter()
        state, metrics = compiled(state, run_key, jnp.int32(updates))
        jax.block_until_ready(state)
        train_s += time.perf_counter() - t0
        updates += eval_every
        returns = np.asarray(evaluate(state.params, jax.random.fold_in(eval_key, updates)))
        means = returns.mean(axis=1)
        env_steps = float(np.asarray(metrics["env_steps"])[0, -1])
        train_return = float(np.asarray(metrics["episode_return"])[:, -1].mean())
        curve.append((env_steps, float(means.min()), float(means.mean()), train_return))
        if means.min() >= target:
            solved = True
            break
    return {
        "solved": solved,
        "updates": updates,
        "env_steps": curve[-1][0],
        "train_s": train_s,
        "compile_s": compile_s,
        "eval_returns": returns.mean(axis=1),
        "curve": np.asarray(curve),
        "state": state,
    }
