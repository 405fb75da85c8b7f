"""jdo: JAX Distributed Optimization.

Every algorithm is written for ONE worker and talks to the others only through collectives on
a named axis (``jdo.WORKERS``). The same per-worker function is then lifted with ``jax.vmap``
(many workers on one device) or ``jax.shard_map`` (one worker per device); see ``jdo.train``.

Subpackages are imported on first use (``jdo.transforms`` does not pull in the runner's
Hydra, orbax or networkx; ``jdo.train.cli`` can set XLA flags before JAX starts).
"""

import importlib

from jdo._axis import WORKERS

__version__ = "0.1.0"

_SUBPACKAGES = (
    "aggregators",
    "algorithms",
    "asynchrony",
    "comm",
    "compress",
    "constrained",
    "data",
    "faults",
    "models",
    "rl",
    "system",
    "topology",
    "train",
    "transforms",
    "worker_map",
)
_FROM_LIFTING = ("LIFTINGS", "lift")

__all__ = ["WORKERS", "__version__", *_FROM_LIFTING, *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"jdo.{name}")
    if name in _FROM_LIFTING:
        return getattr(importlib.import_module("jdo.lifting"), name)
    raise AttributeError(f"module 'jdo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
