"""Collectives over the worker axis and their communication cost."""

from jdo.comm.collectives import (
    gather_mean,
    mean,
    mean_reference,
    num_workers,
    sum,
    sum_reference,
    varying,
    worker_index,
)
from jdo.comm.control import cond, fori_loop, scan, switch
from jdo.comm.cost import (
    KINDS,
    CollectiveOp,
    collective_bytes,
    collective_ops,
    hlo_collective_bytes,
    hlo_collective_ops,
    hlo_num_devices,
    worker_bytes,
    worker_ops,
)
from jdo.comm.gossip import (
    gossip_average,
    group_mean,
    mix,
    mix_reference,
    mix_rounds,
    neighbour_sum,
    push_sum_average,
)

__all__ = [
    "KINDS",
    "CollectiveOp",
    "collective_bytes",
    "collective_ops",
    "cond",
    "fori_loop",
    "gather_mean",
    "gossip_average",
    "group_mean",
    "hlo_collective_bytes",
    "hlo_collective_ops",
    "hlo_num_devices",
    "mean",
    "mean_reference",
    "mix",
    "mix_reference",
    "mix_rounds",
    "neighbour_sum",
    "num_workers",
    "push_sum_average",
    "scan",
    "sum",
    "sum_reference",
    "switch",
    "varying",
    "worker_bytes",
    "worker_ops",
    "worker_index",
]
