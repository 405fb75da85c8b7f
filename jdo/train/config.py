"""Checking a run's configuration before anything compiles.

Every problem raises :class:`ConfigError` naming the key and what is allowed;
``jdo.train.cli`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from jdo.lifting import ALL_LIFTINGS
from jdo.train.tracker import TrackerConfigError, check_logger

TRAINER_KEYS = (
    "steps",
    "batch_size",
    "log_every",
    "eval_every",
    "eval_batch_size",
    "progress",
    "nonfinite",
    "divergence",
    "call_seconds",
    "backup_workers",
    "init",
)
CHECKPOINT_KEYS = (
    "enabled",
    "every",
    "every_s",
    "keep_last",
    "keep_every",
    "async",
    "resume",
    "elastic",
)
DISTRIBUTED_KEYS = ("coordinator", "num_processes", "process_id", "heartbeat_timeout_s")
# Top-level keys: the config groups and the run's own settings. Anything else (a typo such as
# +optimiser=sgd) is refused instead of silently ignored.
TOP_KEYS = (
    "model",
    "algorithm",
    "topology",
    "compression",
    "optimizer",
    "partition",
    "lifting",
    "trainer",
    "logger",
    "checkpoint",
    "task",
    "workers",
    "seed",
    "cpu_devices",
    "deterministic",
    "distributed",
    "cluster",
    "faults",
    "aggregator",
    "backend",
    "parameter_server",
    "ray",
    "objective",
)
BACKENDS = ("spmd", "ray")
# Keys a resumed run may change: how long and where it runs, not what it computes.
RESUME_MAY_DIFFER = (
    "trainer.steps",
    "trainer.eval_every",
    "trainer.eval_batch_size",
    "trainer.progress",
    "trainer.nonfinite",
    "lifting",
    "cpu_devices",
    "logger",
    "trainer.call_seconds",
    "trainer.divergence",
    "checkpoint",
    "distributed",
    "deterministic",
    "ray",
    "objective",
)


class ConfigError(ValueError):
    """A bad configuration value: ``key`` names it, the message says what is allowed."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _get(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(key, "is missing")
        node = node[part]
    return node


def positive_int(cfg: Mapping, key: str, *, allow_none: bool = False) -> int | None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        allowed = "a positive integer" + (" or null" if allow_none else "")
        raise ConfigError(key, f"must be {allowed}, got {value!r}")
    return int(value)


def positive_float(cfg: Mapping, key: str) -> float:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ConfigError(key, f"must be a positive number, got {value!r}")
    return float(value)


def boolean(cfg: Mapping, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def one_of(cfg: Mapping, key: str, allowed: Iterable[str]) -> str:
    value, allowed = _get(cfg, key), tuple(allowed)
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def known_keys(cfg: Mapping, key: str, allowed: Iterable[str]) -> None:
    unknown = sorted(set(_get(cfg, key)) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}", f"unknown key; allowed keys: {', '.join(sorted(allowed))}"
        )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(
    old: Mapping, new: Mapping, may_differ: Iterable[str] = RESUME_MAY_DIFFER
) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every leaf that differs, except keys under ``may_differ``."""
    a, b, allowed = _flatten(old), _flatten(new), tuple(may_differ)
    free = lambda k: any(k == p or k.startswith(p + ".") for p in allowed)
    missing = object()
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if not free(k) and a.get(k, missing) != b.get(k, missing)
    ]


def validate(cfg: Mapping) -> None:
    """Checks every value the runner reads; raises :class:`ConfigError` on the first bad one."""
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(
            unknown[0],
            f"unknown top-level key; allowed: {', '.join(TOP_KEYS)} "
            "(a config group is chosen with group=option, e.g. optimizer=sgd)",
        )
    if "backend" in cfg:
        one_of(cfg, "backend", BACKENDS)
    workers = positive_int(cfg, "workers")
    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    lifting = _lifting(cfg)
    if lifting.name in ("vmap", "hybrid"):
        devices = lifting.devices
        if devices > jax.device_count() or workers % devices:
            raise ConfigError(
                "lifting.devices",
                f"spreads the workers over this many devices: it must "
                f"divide workers ({workers}) and be at most {jax.device_count()} (devices "
                f"available), got {devices}",
            )
    if jax.process_count() > 1:
        used = workers if lifting.name == "shard_map" else lifting.devices
        if used != jax.device_count():
            raise ConfigError(
                "lifting",
                f"a run over {jax.process_count()} processes must use all "
                f"{jax.device_count()} devices (shard_map with workers={jax.device_count()}, or "
                f"vmap or hybrid with lifting.devices={jax.device_count()}); it uses {used}",
            )
    if lifting.name == "shard_map" and workers > jax.device_count():
        raise ConfigError(
            "workers",
            f"the shard_map lifting puts one worker per device: workers must be 1.."
            f"{jax.device_count()} (devices available: {jax.device_count()}), got {workers}; "
            "use lifting=vmap to simulate more workers",
        )
    if lifting.name == "shard_map" and workers % lifting.nodes:
        raise ConfigError(
            "lifting.nodes",
            f"splits the {workers} workers (one per device) into nodes of equal size: it must "
            f"divide workers, got {lifting.nodes}",
        )
    known_keys(cfg, "trainer", TRAINER_KEYS)
    steps = positive_int(cfg, "trainer.steps")
    positive_int(cfg, "trainer.batch_size", allow_none=True)
    log_every = positive_int(cfg, "trainer.log_every")
    eval_every = positive_int(cfg, "trainer.eval_every")
    if eval_every % log_every:
        raise ConfigError(
            "trainer.eval_every",
            f"must be a multiple of trainer.log_every ({log_every}), got {eval_every}",
        )
    if steps % log_every:
        raise ConfigError(
            "trainer.steps", f"must be a multiple of trainer.log_every ({log_every}), got {steps}"
        )
    positive_int(cfg, "trainer.eval_batch_size")
    boolean(cfg, "trainer.progress")
    one_of(cfg, "trainer.nonfinite", ("stop", "skip"))
    if _get(cfg, "trainer.divergence") is not None:
        positive_float(cfg, "trainer.divergence")
    positive_float(cfg, "trainer.call_seconds")
    if "init" in cfg["trainer"]:
        one_of(cfg, "trainer.init", ("shared", "per_worker"))
    known_keys(cfg, "checkpoint", CHECKPOINT_KEYS)
    boolean(cfg, "checkpoint.enabled")
    every = positive_int(cfg, "checkpoint.every", allow_none=True)
    if every is not None and every % log_every:
        raise ConfigError(
            "checkpoint.every",
            f"must be a multiple of trainer.log_every ({log_every}) or null, got {every}",
        )
    if _get(cfg, "checkpoint.every_s") is not None:
        positive_float(cfg, "checkpoint.every_s")
    positive_int(cfg, "checkpoint.keep_last")
    positive_int(cfg, "checkpoint.keep_every", allow_none=True)
    boolean(cfg, "checkpoint.async")
    one_of(cfg, "checkpoint.resume", ("auto", "force"))
    one_of(cfg, "checkpoint.elastic", ("none", "average"))
    if "deterministic" in cfg:
        boolean(cfg, "deterministic")
    known_keys(cfg, "distributed", DISTRIBUTED_KEYS)
    try:
        check_logger(cfg.get("logger"))
    except TrackerConfigError as e:
        raise ConfigError(e.key, e.message) from None
    if "objective" in cfg:
        known_keys(cfg, "objective", ("metric", "direction"))
        one_of(cfg, "objective.direction", ("maximize", "minimize"))
        metric = _get(cfg, "objective.metric")
        if not isinstance(metric, str) or not metric:
            raise ConfigError("objective.metric", f"must be a summary.json key, got {metric!r}")
    optimizer = _get(cfg, "optimizer")
    if "learning_rate" in optimizer:
        positive_float(cfg, "optimizer.learning_rate")
    for name, value in optimizer.items():  # hyperparameters are numbers, flags or null
        if name != "_target_" and not isinstance(value, (numbers.Real, type(None))):
            raise ConfigError(
                f"optimizer.{name}", f"must be a number, true/false or null, got {value!r}"
            )


def _lifting(cfg: Mapping):
    """The lifting the ``lifting`` node's ``_target_`` makes (``jdo.train.mesh.Lifting``)."""
    from jdo.train.mesh import Lifting, lifting_of

    node = _get(cfg, "lifting")
    try:
        lifting = lifting_of(node)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        argument = getattr(cause, "argument", None)
        key = f"lifting.{argument}" if argument in node else "lifting"
        raise ConfigError(key, getattr(cause, "message", str(cause))) from None
    if not isinstance(lifting, Lifting) or lifting.name not in ALL_LIFTINGS:
        raise ConfigError(
            "lifting._target_",
            f"must make a jdo.train.mesh.Lifting ({', '.join(ALL_LIFTINGS)}), got {lifting!r}",
        )
    return lifting
