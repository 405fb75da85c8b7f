"""Building an :class:`~jdo.train.experiment.Experiment` from a config: data, model, algorithm.

Every object is made from its config node's ``_target_`` (Hydra's ``instantiate``); objects a
config cannot hold (a loss function, an environment, the model's ``apply``) are passed as
keyword arguments. Algorithms name the topology and compressor they use in their own YAML
(``topology: ${topology}``), so nothing here reads factory signatures. A factory's
:class:`~jdo.checks.ArgumentError` becomes a :class:`ConfigError` naming the config key
(``compression.ratio``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import hydra.utils
import jax
import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from jdo._axis import WORKERS
from jdo.checks import ArgumentError
from jdo.data import make_loss, partition
from jdo.data.augment import image_augment
from jdo.data.synthetic import optimum_of_parts
from jdo.faults import flip_labels
from jdo.models import functional
from jdo.train.config import ConfigError
from jdo.train.experiment import Experiment
from jdo.transforms import ClippedGossip

RL_TASK_KEYS = (
    "kind",
    "env",
    "num_envs",
    "env_params",
    "normalize_obs",
    "normalize_reward_gamma",
    "eval_episodes",
)
RL_PACKAGE = "jdo.rl."


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None:  # hydra wraps the factory's own error
        e = e.__cause__
    return e


def instantiate(node, key: str, **kwargs):
    """``node``'s ``_target_`` called with its config values and ``kwargs``; a factory's
    error becomes a :class:`ConfigError` naming ``key`` (and the argument, when the factory
    names one of the node's own keys)."""
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if missing:  # paths from the config's root, or from the node for a detached one
        path = missing[0] if missing[0].startswith(f"{key}.") else f"{key}.{missing[0]}"
        raise ConfigError(path, "is required (set it on the command line)")
    try:
        return hydra.utils.instantiate(node, _partial_=True)(**kwargs)
    except Exception as e:
        raise _config_error(e, node, key) from None


def _config_error(e: Exception, node, key: str) -> ConfigError:
    """A factory's error as a :class:`ConfigError` naming ``key``, or ``key.argument`` when the
    factory names one of the node's own keys."""
    cause = _root_cause(e)
    if isinstance(cause, ConfigError):
        return cause
    if isinstance(cause, ArgumentError):
        if cause.argument in node:
            return ConfigError(f"{key}.{cause.argument}", cause.message)
        return ConfigError(key, str(cause))
    return ConfigError(key, f"{type(cause).__name__}: {cause}")


def _target(node) -> str:
    return str(node.get("_target_", "")) if isinstance(node, Mapping) else ""


def _check_parts(cfg: Mapping, workers: int) -> None:
    """Instantiates the topology and compressor an algorithm names on their own first, so a
    bad value is reported under its own key (``topology.n``), not the algorithm's."""
    algorithm = cfg["algorithm"]
    if "topology" in algorithm and algorithm["topology"] is not None:
        topology = instantiate(cfg["topology"], "topology")
        if topology.n != workers:
            raise ConfigError("topology.n", f"must equal workers ({workers}), got {topology.n}")
    if "compressor" in algorithm and algorithm["compressor"] is not None:
        instantiate(cfg["compression"], "compression")
    _check_faults(cfg, workers)


def _check_faults(cfg: Mapping, workers: int) -> None:
    """The faults, the aggregator and the backup workers, under their own keys, and only with
    an algorithm that takes them."""
    algorithm, name = cfg["algorithm"], _target(cfg["algorithm"]).rsplit(".", 1)[-1]
    takes = {"faults": "allreduce_sgd, dpsgd, push_sum", "aggregator": "allreduce_sgd, dpsgd"}
    made = {}
    for key, which in takes.items():
        if cfg.get(key) is None:
            continue
        if key not in algorithm:
            raise ConfigError(
                key, f"is not taken by algorithm {name} (algorithms that take it: {which})"
            )
        made[key] = instantiate(cfg[key], key)
    fault, rule = made.get("faults"), made.get("aggregator")
    try:
        if fault is not None:
            fault.check(workers)
    except ArgumentError as e:
        raise _config_error(e, cfg["faults"], "faults") from None
    _check_rule_kind(rule, name)
    try:
        if rule is not None:
            rule.check(workers, byzantine=getattr(fault, "f", 0))
    except ArgumentError as e:
        raise _config_error(e, cfg["aggregator"], "aggregator") from None
    backup = cfg["trainer"].get("backup_workers", 0)
    if backup:
        if "backup_workers" not in algorithm:
            raise ConfigError(
                "trainer.backup_workers",
                f"is not taken by algorithm {name} (allreduce_sgd takes it)",
            )
        if not cfg.get("cluster"):
            raise ConfigError(
                "trainer.backup_workers",
                "needs a simulated cluster (cluster=datacenter, cloud, edge or measured): the "
                "workers dropped are the last to arrive by its clock",
            )
        if not isinstance(backup, int) or not 0 <= backup < workers:
            raise ConfigError(
                "trainer.backup_workers", f"must be an integer in [0, {workers}), got {backup!r}"
            )


def _check_rule_kind(rule, name: str) -> None:
    """All-gather rules go with allreduce_sgd, ClippedGossip with dpsgd (gossip)."""
    if rule is None:
        return
    gossip = isinstance(rule, ClippedGossip)
    if name == "dpsgd" and not gossip:
        raise ConfigError(
            "aggregator",
            f"{rule} needs every worker's update (an all-gather): it goes with "
            "algorithm=allreduce_sgd; dpsgd takes aggregator=clipped_gossip",
        )
    if name != "dpsgd" and gossip:
        raise ConfigError(
            "aggregator",
            f"clipped_gossip clips the pull of a worker's gossip neighbours: it goes with "
            f"algorithm=dpsgd, not {name}",
        )


def _check_init(algorithm, params, node) -> None:
    # init is per worker and may read its worker axis (a sharded server's shard): one worker
    init = jax.vmap(algorithm.init, in_axes=(None, None), axis_name=WORKERS, axis_size=1)
    try:  # an algorithm may refuse the model at init (e.g. a Newton solve on a big model)
        jax.eval_shape(init, params, jax.random.key(0))
    except ValueError as e:
        raise _config_error(e, node, "algorithm") from None


@dataclasses.dataclass(frozen=True)
class Problem:
    """A supervised task without its algorithm: what :func:`build` hands the algorithm, and
    what the Ray backend's actors rebuild in their own processes (:mod:`jdo.train.ray_ps`)."""

    dataset: Any
    data: Any
    apply: Any
    params: Any
    loss_fn: Any
    optimizer: Any


def model_init(node, **kwargs):
    """``init_params(key) -> params``: the model of config ``node`` built with
    ``nnx.Rngs(key)`` (traceable: ``jax.vmap`` it over per-worker keys)."""

    def init_params(key):
        return functional(instantiate(node, "model", rngs=nnx.Rngs(key), **kwargs))[1]

    return init_params


def build(cfg: Mapping, cluster=None) -> Experiment:
    """Data, model and algorithm from a validated config (see ``jdo/conf``). An algorithm whose
    YAML names a ``cluster`` key (an asynchronous parameter server, whose events come from the
    cluster's clock) is given the run's :class:`~jdo.system.Cluster` (None without one)."""
    if cfg["task"].get("kind") == "rl":  # environments instead of a dataset
        return build_rl(cfg)
    target = _target(cfg["algorithm"])
    if target.startswith(RL_PACKAGE):
        raise ConfigError(
            "algorithm",
            f"{target.rsplit('.', 1)[-1]} is a reinforcement-"
            "learning algorithm: use it with an RL task (task=cartpole, acrobot, "
            "pendulum)",
        )
    p = build_problem(cfg)
    _check_parts(cfg, int(cfg["workers"]))
    run_values = {"cluster": cluster} if "cluster" in cfg["algorithm"] else {}
    algorithm = instantiate(
        cfg["algorithm"], "algorithm", loss_fn=p.loss_fn, optimizer=p.optimizer, **run_values
    )
    _check_init(algorithm, p.params, cfg["algorithm"])
    fault = instantiate(cfg["faults"], "faults") if cfg.get("faults") else None
    data = poison(p.data, p.dataset, fault)
    init_params = model_init(
        cfg["model"], in_shape=p.dataset.in_shape, num_outputs=p.dataset.num_outputs
    )
    return Experiment(
        algorithm, p.apply, p.loss_fn, p.params, data, p.dataset, init_params=init_params
    )


def build_problem(cfg: Mapping) -> Problem:
    """The dataset, every worker's part, the model, its loss and the optimizer of a supervised
    task (no algorithm)."""
    if cfg["task"].get("kind") == "rl":
        raise ConfigError("task", "must be a supervised task here (not reinforcement learning)")
    workers, seed = int(cfg["workers"]), int(cfg["seed"])
    dataset = instantiate(cfg["task"]["data"], "task.data")
    split = instantiate(
        cfg["partition"], "partition", dataset=dataset, num_workers=workers, seed=seed
    )
    try:
        data = partition.stack(dataset.x_train, dataset.y_train, split)
    except ValueError as e:
        raise ConfigError(
            "workers", f"{e} ({len(dataset.x_train)} training samples for {workers} workers)"
        ) from None
    if dataset.optimum is not None:  # the optimum of the objective the workers actually share
        dataset = dataclasses.replace(dataset, optimum=optimum_of_parts(dataset, split))
    model = instantiate(
        cfg["model"],
        "model",
        in_shape=dataset.in_shape,
        num_outputs=dataset.num_outputs,
        rngs=nnx.Rngs(seed),
    )
    apply, params = functional(model)
    loss_fn = make_loss(apply, dataset.kind, dataset.l2, augment_of(cfg["task"], dataset))
    optimizer = instantiate(cfg["optimizer"], "optimizer")
    return Problem(dataset, data, apply, params, loss_fn, optimizer)


AUGMENT_KEYS = ("crop_padding", "flip")


def augment_of(task: Mapping, dataset):
    """``task.augment`` (``{crop_padding: 4, flip: true}``, or null/absent for none) as the
    loss's ``augment(x, key)`` (:func:`jdo.data.augment.image_augment`): random crops and flips
    of each training batch inside the jitted step, none at evaluation."""
    node = task.get("augment")
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(
            "task.augment",
            f"must be a mapping such as {{crop_padding: 4, flip: true}} or null, got {node!r}",
        )
    unknown = sorted(set(node) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"task.augment.{unknown[0]}", f"unknown key; allowed keys: {', '.join(AUGMENT_KEYS)}"
        )
    if np.ndim(dataset.x_train) != 4:
        raise ConfigError(
            "task.augment",
            f"crops and flips need images [N, H, W, C], but task {dataset.name} has inputs of "
            f"shape {tuple(np.shape(dataset.x_train)[1:])}: set task.augment=null",
        )
    try:
        return image_augment(**node)
    except ArgumentError as e:
        raise ConfigError(f"task.augment.{e.argument}", e.message) from None


def poison(data: partition.WorkerData, dataset, fault) -> partition.WorkerData:
    """The training parts as the Byzantine workers of a data attack hold them: under
    ``jdo.faults.byzantine(workers, label_flip)`` the listed workers' labels become
    ``C − 1 − y`` (:func:`jdo.faults.flip_labels`; C = 2 for binary labels), so their honest
    loss and gradient are computed on flipped labels and the robust aggregator sees those.
    Every other worker's part, and every other fault, leaves ``data`` as it is (the same
    object). The flip is a fixed permutation of the classes, so doing it once on the host is
    the same as doing it in the loss at every step; the per-worker step stays unaware."""
    if not getattr(getattr(fault, "attack", None), "is_data_attack", False):
        return data
    if dataset.kind == "regression":
        raise ConfigError(
            "faults.attack",
            f"label_flip needs class labels, but task {dataset.name} is a regression: choose "
            "sign_flip, alie, ipm or gaussian",
        )
    classes = dataset.num_outputs if dataset.kind == "classification" else 2
    y = np.array(data.y)
    for worker in fault.workers:  # fault.check(W) already ran: every index is a worker
        y[worker] = np.asarray(flip_labels(y[worker], classes))
    return data._replace(y=y)


def _rl_task(cfg: Mapping) -> dict[str, Any]:
    task = cfg["task"]
    task = OmegaConf.to_container(task, resolve=True) if isinstance(task, DictConfig) else task
    unknown = sorted(set(task) - set(RL_TASK_KEYS))
    if unknown:
        raise ConfigError(
            f"task.{unknown[0]}", f"unknown key; allowed keys: {', '.join(sorted(RL_TASK_KEYS))}"
        )
    for key in ("num_envs", "eval_episodes"):
        value = task.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"task.{key}", f"must be a positive integer, got {value!r}")
    if not isinstance(task.get("env_params") or {}, Mapping):
        raise ConfigError("task.env_params", f"must be a mapping, got {task['env_params']!r}")
    if not isinstance(task.get("normalize_obs", False), bool):
        raise ConfigError(
            "task.normalize_obs", f"must be true or false, got {task['normalize_obs']!r}"
        )
    return task


def _rl_env(task: Mapping):
    from jdo.rl import make_vec_env

    try:
        return make_vec_env(
            task.get("env"),
            task.get("num_envs", 1),
            normalize_obs=task.get("normalize_obs", False),
            normalize_reward_gamma=task.get("normalize_reward_gamma"),
            **(task.get("env_params") or {}),
        )
    except ArgumentError as e:
        keys = {
            "name": "task.env",
            "num_envs": "task.num_envs",
            "gamma": "task.normalize_reward_gamma",
        }
        raise ConfigError(
            keys.get(e.argument, f"task.env_params.{e.argument}"), e.message
        ) from None


def build_rl(cfg: Mapping) -> Experiment:
    """Environment (``cfg.task``), network (``cfg.model``), optimizer and RL algorithm
    (``cfg.algorithm``, a ``jdo.rl`` factory) as an :class:`Experiment` without data: the
    runner passes ``batch=None`` and each worker rolls out its own environments."""
    task = _rl_task(cfg)
    workers, seed = int(cfg["workers"]), int(cfg["seed"])
    env = _rl_env(task)
    target = _target(cfg["algorithm"])
    if not target.startswith(RL_PACKAGE):
        raise ConfigError(
            "algorithm",
            f"an RL task needs an RL algorithm (a2c, a3c, ppo, "
            f"decentralized_ppo, ddpg), got _target_={target!r}",
        )
    model = instantiate(
        cfg["model"],
        "model",
        obs_size=env.observation_size,
        action_space=env.action_space,
        rngs=nnx.Rngs(seed),
    )
    apply, params = functional(model)
    optimizer = instantiate(cfg["optimizer"], "optimizer")
    _check_parts(cfg, workers)
    algorithm = instantiate(
        cfg["algorithm"], "algorithm", env=env, apply=apply, optimizer=optimizer
    )
    _check_init(algorithm, params, cfg["algorithm"])
    evaluate_worker = _rl_evaluate_worker(task, env, apply, deterministic=target == "jdo.rl.ddpg")
    return Experiment(
        algorithm,
        apply,
        None,
        params,
        None,
        None,
        counters=("env_steps",),
        evaluate_worker=evaluate_worker,
        init_params=model_init(
            cfg["model"], obs_size=env.observation_size, action_space=env.action_space
        ),
    )


def _rl_evaluate_worker(task: Mapping, env, apply, *, deterministic: bool):
    """``task.eval_episodes`` fresh episodes of the task's raw env per worker, observed through
    the worker's frozen normaliser: ``return`` (sampled actions) and ``return_greedy``; DDPG's
    deterministic actor (no exploration noise) gives ``return`` only."""
    from jdo.rl import deterministic_policy, make_env, make_evaluate_worker

    raw = make_env(task["env"], **(task.get("env_params") or {}))
    policy = deterministic_policy(raw.action_space) if deterministic else None
    return make_evaluate_worker(
        raw,
        env,
        apply,
        num_episodes=task.get("eval_episodes", 32),
        policy=policy,
        deterministic=deterministic,
    )
