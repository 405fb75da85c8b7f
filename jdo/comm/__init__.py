"""Collectives over the worker axis and their communication cost."""

from jdo.comm.collectives import (
    mean,
    mean_reference,
    num_workers,
    sum,
    sum_reference,
    worker_index,
)
from jdo.comm.cost import KINDS, collective_bytes, hlo_collective_bytes, worker_bytes

__all__ = [
    "KINDS",
    "collective_bytes",
    "hlo_collective_bytes",
    "mean",
    "mean_reference",
    "num_workers",
    "sum",
    "sum_reference",
    "worker_bytes",
    "worker_index",
]
