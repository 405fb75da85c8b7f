"""Host-side communication graphs: mixing matrices W(t), static ppermute schedules, spectral
gaps. Nothing here runs on a device."""

from jdo.topology.graphs import (
    Topology,
    check_topology,
    complete,
    erdos_renyi,
    exponential,
    from_matrix,
    from_networkx,
    one_peer_exponential,
    ring,
    star,
    symmetric_exponential,
    time_varying,
    torus,
)
from jdo.topology.schedule import Round, Schedule, make_schedule, schedule_matrix

__all__ = [
    "Round",
    "Schedule",
    "Topology",
    "check_topology",
    "complete",
    "erdos_renyi",
    "exponential",
    "from_matrix",
    "from_networkx",
    "make_schedule",
    "one_peer_exponential",
    "ring",
    "schedule_matrix",
    "star",
    "symmetric_exponential",
    "time_varying",
    "torus",
]
