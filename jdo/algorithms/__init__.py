"""Full algorithms as per-worker ``Algorithm(init, step)`` pairs, and a registry by name."""

from jdo.algorithms.allreduce_sgd import AllReduceSGDState, allreduce_sgd
from jdo.algorithms.base import Algorithm, LossFn, available, get, register
from jdo.algorithms.decentralized import (
    DPSGDState,
    GradientTrackingState,
    PushSumState,
    dpsgd,
    gradient_tracking,
    push_sum,
)

__all__ = [
    "Algorithm",
    "AllReduceSGDState",
    "DPSGDState",
    "GradientTrackingState",
    "PushSumState",
    "LossFn",
    "allreduce_sgd",
    "available",
    "dpsgd",
    "get",
    "gradient_tracking",
    "push_sum",
    "register",
]
