"""Optax transforms that communicate over the worker axis: the import-into-your-loop surface."""

from jdo.transforms.adaptive import (
    AccordionState,
    AdaCommState,
    MatchaState,
    accordion,
    adacomm,
    adaptive_metrics,
    matcha,
)
from jdo.transforms.all_reduce import all_reduce
from jdo.transforms.choco import ChocoState, choco
from jdo.transforms.clipped_gossip import ClippedGossip, ClippedGossipState, clipped_gossip
from jdo.transforms.compressed import CompressedAllReduceState, compressed_all_reduce
from jdo.transforms.diloco import DiLoCoState, diloco
from jdo.transforms.gossip import GossipState, gossip
from jdo.transforms.local import LocalSGDState, hierarchical_local_sgd, local_sgd
from jdo.transforms.powersgd import PowerSGDState, powersgd
from jdo.transforms.robust import RobustAllReduceState, robust_all_reduce
from jdo.transforms.sharded import ShardedState, sharded_update

__all__ = [
    "AccordionState",
    "AdaCommState",
    "MatchaState",
    "ChocoState",
    "ClippedGossip",
    "ClippedGossipState",
    "CompressedAllReduceState",
    "DiLoCoState",
    "GossipState",
    "LocalSGDState",
    "PowerSGDState",
    "RobustAllReduceState",
    "ShardedState",
    "accordion",
    "adacomm",
    "adaptive_metrics",
    "all_reduce",
    "choco",
    "clipped_gossip",
    "compressed_all_reduce",
    "diloco",
    "gossip",
    "hierarchical_local_sgd",
    "local_sgd",
    "matcha",
    "powersgd",
    "robust_all_reduce",
    "sharded_update",
]
