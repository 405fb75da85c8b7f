"""The runner: lifting, jit, K steps per call, evaluation, logging. Only this package (and
``experiments/``) touches jit, devices, files and logs.

Names are imported on first use, so ``jdo.train.cli`` can set XLA flags before JAX starts and
``import jdo`` stays light.
"""

import importlib

_EXPORTS = {
    "LIFTINGS": "jdo.lifting",
    "lift": "jdo.lifting",
    "ConfigError": "jdo.train.config",
    "validate": "jdo.train.config",
    "make_mesh": "jdo.train.mesh",
    "Experiment": "jdo.train.experiment",
    "build": "jdo.train.builder",
    "consensus_distance": "jdo.train.evaluate",
    "fit": "jdo.train.loop",
    "FitOptions": "jdo.train.loop",
    "NonFiniteError": "jdo.train.loop",
    "CheckpointOptions": "jdo.train.restore",
    "read_state": "jdo.train.checkpoint",
    "make_evaluate": "jdo.train.evaluate",
    "run": "jdo.train.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jdo.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
