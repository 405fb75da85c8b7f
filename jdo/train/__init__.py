"""The runner: lifting, jit, K steps per call, evaluation, logging. Only this package (and
``experiments/``) touches jit, devices, files and logs."""

from jdo.lifting import LIFTINGS, lift
from jdo.train.config import ConfigError, validate
from jdo.train.mesh import make_mesh
from jdo.train.runner import Experiment, build, consensus_distance, fit, make_evaluate, run

__all__ = [
    "LIFTINGS",
    "ConfigError",
    "Experiment",
    "build",
    "consensus_distance",
    "fit",
    "lift",
    "make_evaluate",
    "make_mesh",
    "run",
    "validate",
]
