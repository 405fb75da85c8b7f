"""Timing helpers for benchmarks: interleaved rounds, minimum of per-round minima, A/A control.

The machine is shared and noisy, so benchmarks never compare numbers from different runs: every
variant is timed in the same rounds, one call each in turn, and reported as a ratio to the
baseline. An A/A row (the baseline against a second copy of itself) shows the noise floor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def simulate_cpu_devices(count: int = 8) -> None:
    """Must run before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def interleaved_min(
    fns: dict[str, Callable[[], object]], rounds: int = 20, calls: int = 10, block=None
) -> dict[str, float]:
    """Seconds per call for each fn: min over rounds of the min over ``calls`` calls.

    Each call is waited on (``block``), so no queue of dispatched collectives builds up (the CPU
    collective deadlock in PITFALLS) and the time is the call's own.
    """
    import jax

    block = block or jax.block_until_ready
    for fn in fns.values():  # warm up: compile and first run
        block(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                block(fn())
                best[name] = min(best[name], time.perf_counter() - t0)
    return best
