"""Deterministic simulated asynchrony on the cluster clock: event schedules computed on the
host (inspectable, plottable) that the per-worker algorithms step through."""

from jdo.asynchrony.gossip import (
    Exchange,
    GossipEvent,
    GossipSchedule,
    exchange_plan,
    gossip_schedule,
    matching_matrix,
    neighbours,
    pairwise_average,
    pairwise_average_reference,
    partner_value,
)

__all__ = [
    "Exchange",
    "GossipEvent",
    "GossipSchedule",
    "exchange_plan",
    "gossip_schedule",
    "matching_matrix",
    "neighbours",
    "pairwise_average",
    "pairwise_average_reference",
    "partner_value",
]
