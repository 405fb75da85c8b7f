"""Full algorithms as per-worker ``Algorithm(init, step)`` pairs, and a registry by name."""

from jdo.algorithms.allreduce_sgd import (
    AllReduceSGDState,
    TrainState,
    allreduce_sgd,
    from_transform,
)
from jdo.algorithms.base import Algorithm, LossFn, available, get, register
from jdo.algorithms.communication import (
    choco_sgd,
    compressed_sgd,
    diloco,
    fedavg,
    local_sgd,
    powersgd,
)
from jdo.algorithms.decentralized import (
    DPSGDState,
    GradientTrackingState,
    PushSumState,
    dpsgd,
    gradient_tracking,
    push_sum,
)
from jdo.algorithms.parameter_server import parameter_server

__all__ = [
    "Algorithm",
    "AllReduceSGDState",
    "DPSGDState",
    "GradientTrackingState",
    "PushSumState",
    "TrainState",
    "LossFn",
    "allreduce_sgd",
    "available",
    "choco_sgd",
    "compressed_sgd",
    "diloco",
    "dpsgd",
    "fedavg",
    "from_transform",
    "get",
    "gradient_tracking",
    "local_sgd",
    "parameter_server",
    "powersgd",
    "push_sum",
    "register",
]
