"""Full algorithms as per-worker ``Algorithm(init, step)`` pairs, and a registry by name."""

from jdo.algorithms.allreduce_sgd import AllReduceSGDState, allreduce_sgd
from jdo.algorithms.base import Algorithm, LossFn, available, get, register

__all__ = [
    "Algorithm",
    "AllReduceSGDState",
    "LossFn",
    "allreduce_sgd",
    "available",
    "get",
    "register",
]
