"""Asynchrony on the simulated cluster's clock: event schedules (async, SSP, k-async) decided
by who finishes when, the simulated asynchronous parameter server that replays them inside
SPMD, and the optax pieces that correct stale gradients (staleness-aware learning rate,
DC-ASGD); and asynchronous gossip (AD-PSGD), stepped one wave of simulated events at a time.

    events = jdo.asynchrony.schedule(cluster, num_workers=8, num_updates=100, mode="ssp",
                                     staleness=2)
"""

from jdo.asynchrony.corrections import corrections, dc_asgd, staleness_aware_lr
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
from jdo.asynchrony.plan import Plan, make_plan, stats_record
from jdo.asynchrony.schedule import MODES, Event, Simulation, schedule, simulate
from jdo.asynchrony.server import (
    AsyncPSState,
    SimulatedPS,
    algorithm,
    replay,
    simulation_of,
)

__all__ = [
    "MODES",
    "AsyncPSState",
    "Event",
    "Plan",
    "SimulatedPS",
    "Simulation",
    "algorithm",
    "corrections",
    "dc_asgd",
    "make_plan",
    "replay",
    "schedule",
    "simulate",
    "simulation_of",
    "staleness_aware_lr",
    "stats_record",
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
