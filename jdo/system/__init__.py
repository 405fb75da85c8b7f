"""The simulated cluster: links (α, β), collective-time formulas, compute models and
stragglers, host-side and pure (the stragglers' ``sample`` is traceable JAX), and the
per-worker clocks that follow the messages (:mod:`jdo.system.clock`, traced with the step).

    cluster = jdo.system.Cluster(
        workers_per_node=8,
        intra=jdo.system.Link(latency_s=2e-6, bandwidth_Bps=450e9),
        inter=jdo.system.Link(latency_s=4e-6, bandwidth_Bps=50e9),
        compute=jdo.system.fixed(0.01),
        stragglers=jdo.system.shifted_exponential(1.0, 0.2),
    )
    cluster.collective_time("all-reduce", 4 * 10**6, 16)   # seconds
    jdo.system.estimate(jitted_step, (state, batch), cluster).total_s
"""

from jdo.system import clock
from jdo.system.cluster import (
    BARRIERS,
    COLLECTIVES,
    KINDS,
    Cluster,
    Link,
    ring_cost,
    tree_cost,
)
from jdo.system.compute import (
    ComputeModel,
    Fixed,
    Flops,
    Measured,
    StepProfile,
    fixed,
    flops,
    measured,
)
from jdo.system.estimate import Estimate, OpEstimate, estimate, price, time_step, wire_bytes
from jdo.system.stragglers import (
    Lognormal,
    Pauses,
    ShiftedExponential,
    SlowWorker,
    Stragglers,
    draw_key,
    lognormal,
    pauses,
    shifted_exponential,
    slow_worker,
)

__all__ = [
    "clock",
    "BARRIERS",
    "COLLECTIVES",
    "KINDS",
    "Cluster",
    "ComputeModel",
    "Estimate",
    "Fixed",
    "Flops",
    "Link",
    "Lognormal",
    "Measured",
    "OpEstimate",
    "Pauses",
    "ShiftedExponential",
    "SlowWorker",
    "StepProfile",
    "Stragglers",
    "draw_key",
    "estimate",
    "fixed",
    "flops",
    "lognormal",
    "measured",
    "pauses",
    "price",
    "ring_cost",
    "shifted_exponential",
    "slow_worker",
    "time_step",
    "wire_bytes",
    "tree_cost",
]
