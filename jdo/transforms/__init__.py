"""Optax transforms that communicate over the worker axis: the import-into-your-loop surface."""

from jdo.transforms.all_reduce import all_reduce
from jdo.transforms.gossip import GossipState, gossip

__all__ = ["GossipState", "all_reduce", "gossip"]
