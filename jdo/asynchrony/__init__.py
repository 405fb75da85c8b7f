"""Asynchrony on the simulated cluster's clock: event schedules (async, SSP, k-async) decided
by who finishes when, the simulated asynchronous parameter server that replays them inside
SPMD, and the optax pieces that correct stale gradients (staleness-aware learning rate,
DC-ASGD).

    events = jdo.asynchrony.schedule(cluster, num_workers=8, num_updates=100, mode="ssp",
                                     staleness=2)
"""

from jdo.asynchrony.schedule import MODES, Event, Simulation, schedule, simulate

__all__ = [
    "MODES",
    "Event",
    "Simulation",
    "schedule",
    "simulate",
]
