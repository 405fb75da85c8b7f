"""Checking a run's configuration before anything compiles.

Every problem raises :class:`ConfigError` naming the key and what is allowed;
``experiments/train.py`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from jdo.lifting import LIFTINGS

PARTITIONS = ("iid", "dirichlet", "shard", "natural")
TRAINER_KEYS = ("steps", "batch_size", "log_every", "eval_every", "eval_batch_size", "progress")
LOGGER_KEYS = ("tensorboard",)


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


def validate(cfg: Mapping) -> None:
    """Checks every value the runner reads; raises :class:`ConfigError` on the first bad one."""
    workers = positive_int(cfg, "workers")
    if isinstance(_get(cfg, "seed"), bool) or not isinstance(_get(cfg, "seed"), numbers.Integral):
        raise ConfigError("seed", f"must be an integer, got {_get(cfg, 'seed')!r}")
    lifting = one_of(cfg, "lifting.name", LIFTINGS)
    if lifting == "shard_map" and workers > jax.device_count():
        raise ConfigError(
            "workers",
            f"the shard_map lifting puts one worker per device: workers must be 1.."
            f"{jax.device_count()} (devices available: {jax.device_count()}), got {workers}; "
            "use lifting=vmap to simulate more workers",
        )
    known_keys(cfg, "trainer", TRAINER_KEYS)
    steps = positive_int(cfg, "trainer.steps")
    positive_int(cfg, "trainer.batch_size", allow_none=True)
    log_every = positive_int(cfg, "trainer.log_every")
    eval_every = positive_int(cfg, "trainer.eval_every")
    if eval_every % log_every:
        raise ConfigError(
            "trainer.eval_every", f"must be a multiple of trainer.log_every ({log_every}), "
            f"got {eval_every}",
        )  # fmt: skip
    if steps % log_every:
        raise ConfigError(
            "trainer.steps", f"must be a multiple of trainer.log_every ({log_every}), got {steps}"
        )
    positive_int(cfg, "trainer.eval_batch_size")
    boolean(cfg, "trainer.progress")
    known_keys(cfg, "logger", LOGGER_KEYS)
    boolean(cfg, "logger.tensorboard")
    partition = one_of(cfg, "partition.name", PARTITIONS)
    if partition == "dirichlet":
        positive_float(cfg, "partition.alpha")
    if partition == "shard":
        positive_int(cfg, "partition.shards_per_worker")
    optimizer = _get(cfg, "optimizer")
    if "learning_rate" in optimizer:
        positive_float(cfg, "optimizer.learning_rate")
    for name, value in optimizer.items():  # hyperparameters are numbers, flags or null
        if name != "_target_" and not isinstance(value, (numbers.Real, type(None))):
            raise ConfigError(f"optimizer.{name}", f"must be a number, true/false or null, "
                              f"got {value!r}")  # fmt: skip
