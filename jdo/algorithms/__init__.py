"""Full algorithms as per-worker ``Algorithm(init, step)`` pairs, and a registry by name."""

from jdo.algorithms.ad_psgd import (
    ADPSGDState,
    GossipSimulation,
    ad_psgd,
    gossip_simulation_of,
)
from jdo.algorithms.adaptive import accordion, adacomm, matcha
from jdo.algorithms.allreduce_sgd import (
    AllReduceSGDState,
    TrainState,
    allreduce_sgd,
    from_transform,
)
from jdo.algorithms.base import Algorithm, Cohort, LossFn, available, get, register
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
    "ADPSGDState",
    "Algorithm",
    "Cohort",
    "AllReduceSGDState",
    "DPSGDState",
    "GossipSimulation",
    "GradientTrackingState",
    "PushSumState",
    "TrainState",
    "LossFn",
    "accordion",
    "ad_psgd",
    "adacomm",
    "allreduce_sgd",
    "available",
    "choco_sgd",
    "compressed_sgd",
    "diloco",
    "dpsgd",
    "fedavg",
    "from_transform",
    "get",
    "gossip_simulation_of",
    "gradient_tracking",
    "local_sgd",
    "matcha",
    "parameter_server",
    "powersgd",
    "push_sum",
    "register",
]
