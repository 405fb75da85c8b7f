"""Anakin-style training (Hessel et al. 2021, "Podracer architectures for scalable
reinforcement learning"): environments, workers and learner in ONE pure function of a key, so
``jax.jit(jax.vmap(make_train(config)))(keys)`` trains many seeds at once (PureJaxRL style).

Example::

    train = jdo.rl.make_train({"algorithm": "ppo", "workers": 8, "updates": 100})
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 4))  # 4 seeds
    out["metrics"]["episode_return"]  # f32[4 seeds, 100 updates, 8 workers]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.rl.a2c import a2c, a3c
from jdo.rl.envs import make_vec_env
from jdo.rl.networks import ActorCritic, make_network
from jdo.rl.ppo import ppo
from jdo.topology import Topology

ALGORITHMS = {"a2c": a2c, "ppo": ppo, "a3c": a3c}


def _default(factory, name):
    function = factory.__init__ if isinstance(factory, type) else factory
    return inspect.signature(function).parameters[name].default


# The run's own settings. Algorithm hyperparameters are NOT here: ``algorithm_kwargs`` overrides
# the factory's signature defaults, the one source of them (jdo/conf/algorithm/*.yaml repeats
# them for the command line, and tests/rl/test_anakin.py checks that they agree, as it checks
# these values against jdo/conf's task=cartpole, model=actor_critic, optimizer=adam, workers).
DEFAULTS: dict[str, Any] = {
    "env": "CartPole-v1",
    "env_params": {},  # gymnax EnvParams overrides, e.g. {"max_steps_in_episode": 200}
    "num_envs": 4,  # per worker
    "normalize_obs": False,
    "normalize_reward_gamma": 0.99,  # None: raw rewards
    "workers": 8,
    "algorithm": "ppo",
    "algorithm_kwargs": {},  # e.g. {"num_steps": 128, "communication": "gossip"}
    "topology": None,  # a jdo.topology.Topology for communication="gossip"
    "learning_rate": 1e-3,
    "anneal_lr": False,  # decay the learning rate linearly to 0 over the run's optimizer steps
    "hidden": _default(ActorCritic, "hidden"),
    "updates": 100,
    "seed_params": 0,  # network init seed (the key passed to train drives everything else)
}


def _optimizer_steps_per_update(factory, kwargs) -> int:
    """Optimizer steps in one algorithm step: PPO's epochs x minibatches, else 1."""
    if factory is not ppo:
        return 1
    get = lambda k: int(kwargs.get(k, _default(ppo, k)))
    return get("epochs") * get("num_minibatches")


def make_train(config: Mapping[str, Any] | None = None) -> Callable[[jax.Array], dict]:
    """A pure ``train(key) -> {"state": ..., "metrics": ...}`` from ``config`` (keys and
    defaults in :data:`DEFAULTS`; the algorithm's hyperparameters default to its factory's).

    ``train`` builds ``workers`` workers (``jax.vmap`` with ``axis_name="workers"``, so every
    collective of the algorithm is real), runs ``updates`` algorithm steps in a ``lax.scan``
    and returns the stacked final state (leaves ``[workers, ...]``) and every step's metrics
    (``[updates, workers]``). Worker ``w``'s step-``t`` key is ``fold_in(fold_in(key, w), t)``,
    as in :func:`jdo.train.fit`.
    """
    for key in sorted(config or {}):
        if key not in DEFAULTS:
            raise checks.InvalidArgument(
                key, f"is not a make_train key; allowed: {', '.join(sorted(DEFAULTS))}"
            )
    cfg = {**DEFAULTS, **(config or {})}
    checks.one_of("algorithm", cfg["algorithm"], ALGORITHMS)
    workers = checks.positive_int("workers", cfg["workers"])
    updates = checks.positive_int("updates", cfg["updates"])
    env = make_vec_env(
        cfg["env"],
        cfg["num_envs"],
        normalize_obs=cfg["normalize_obs"],
        normalize_reward_gamma=cfg["normalize_reward_gamma"],
        **cfg["env_params"],
    )
    apply, params = make_network(env, tuple(cfg["hidden"]), cfg["seed_params"])
    kwargs = dict(cfg["algorithm_kwargs"])
    if isinstance(cfg["topology"], Topology):
        kwargs["topology"] = cfg["topology"]
    factory = ALGORITHMS[cfg["algorithm"]]
    lr = cfg["learning_rate"]
    if cfg["anneal_lr"]:
        lr = optax.linear_schedule(lr, 0.0, updates * _optimizer_steps_per_update(factory, kwargs))
    algo = factory(env, apply, optax.adam(lr), **kwargs)

    def train(key):
        init_key, run_key = jax.random.split(key)
        init = jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS)
        step = jax.vmap(algo.step, in_axes=(0, None, 0), axis_name=WORKERS)
        state = init(params, jax.random.split(init_key, workers))

        def body(state, t):
            keys = jax.vmap(lambda w: jax.random.fold_in(jax.random.fold_in(run_key, w), t))(
                jnp.arange(workers)
            )
            return step(state, None, keys)

        state, metrics = jax.lax.scan(body, state, jnp.arange(updates))
        return {"state": state, "metrics": metrics}

    train.env, train.apply, train.params, train.algorithm = env, apply, params, algo
    train.config = cfg  # the full config, defaults filled in
    return train
