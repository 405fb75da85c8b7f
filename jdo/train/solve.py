"""Steps to solve: ``train_until(config, target)`` trains a :func:`jdo.rl.make_train` config
in jitted chunks and evaluates every worker's policy on fresh episodes after each, until a
target return is reached (updates, env steps and seconds to solve). The runner's RL runs are
built by :func:`jdo.train.builder.build_rl`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.lifting import lift
from jdo.rl import evaluate_policy, make_env, make_train


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
    episodes (sampled actions; observations through the worker's own frozen normaliser when
    ``normalize_obs``) and stops once the worst worker's mean return is ``>= target``.

    Returns a dict: ``solved``, ``updates``, ``env_steps`` (all workers), ``train_s`` (device
    time of the training chunks, compile and evaluation excluded), ``compile_s``,
    ``eval_returns`` (``[workers]`` means at the stop), ``curve`` (one row per chunk:
    ``env_steps``, worst and mean evaluation return, the training ``episode_return``), and the
    final stacked ``state``.
    """
    checks.positive_int("eval_every", eval_every)
    if checks.positive_int("max_updates", max_updates) < eval_every:
        raise checks.InvalidArgument(
            "max_updates", f"must be >= eval_every ({eval_every}), got {max_updates}"
        )
    train = make_train({**config, "updates": max_updates})
    algo, workers = train.algorithm, int(train.config["workers"])
    raw_env = make_env(train.env.name, **train.config["env_params"])

    def worker_chunk(state, key, t0):
        def body(s, t):
            k = jax.random.fold_in(jax.random.fold_in(key, axis_index(WORKERS)), t)
            return algo.step(s, None, k)

        return jax.lax.scan(body, state, t0 + jnp.arange(eval_every))

    chunk = jax.jit(lift(worker_chunk, lifting, mesh=mesh, in_axes=(0, None, None)))
    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    evaluate = jax.jit(
        jax.vmap(
            lambda state, k: evaluate_policy(
                raw_env,
                train.apply,
                state.params,
                k,
                num_episodes=eval_episodes,
                obs_transform=lambda obs: train.env.observe(state.env_state, obs),
            ),
            in_axes=(0, None),
        )
    )
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
        returns = np.asarray(evaluate(state, jax.random.fold_in(eval_key, updates)))
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
