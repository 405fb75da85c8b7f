"""Multi-process runs on JAX's own multi-controller runtime (``jax.distributed``).

Where the processes come from, in order: the ``distributed`` config node; the environment
variables ``JDO_COORDINATOR`` / ``JDO_NUM_PROCESSES`` / ``JDO_PROCESS_ID`` (set by
``python -m experiments.launch``); SLURM or Open MPI, detected by JAX itself. On CPU the
collectives go over gloo. Must run before anything else touches JAX's backends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("jdo")

ENV = {"coordinator": "JDO_COORDINATOR", "num_processes": "JDO_NUM_PROCESSES",
       "process_id": "JDO_PROCESS_ID"}  # fmt: skip


def _cluster_detected() -> bool:
    # SLURM_STEP_NUM_TASKS is set inside an srun step (SLURM_NTASKS also in a plain batch script)
    for var in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def settings(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` arguments for this process, or None for a
    single-process run. Raises ``ValueError`` naming the key for a bad or partial setting."""
    node = dict(node or {})
    explicit = {}
    for key, var in ENV.items():
        value = node.get(key)
        if value is None and os.environ.get(var):
            value = os.environ[var]
            if key != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"{var}: must be an integer, got {value!r}") from None
        explicit[key] = value
    timeout = node.get("heartbeat_timeout_s", 20)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ValueError(f"distributed.heartbeat_timeout_s: must be a positive integer, got "
                         f"{timeout!r}")  # fmt: skip
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(f"distributed.{missing[0]}: is required when "
                         f"distributed.{given[0]} is set (or set {ENV[missing[0]]})")  # fmt: skip
    if given:
        n, i = explicit["num_processes"], explicit["process_id"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"distributed.num_processes: must be a positive integer, got {n!r}")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"distributed.process_id: must be in 0..{n - 1}, got {i!r}")
        if not isinstance(explicit["coordinator"], str) or ":" not in explicit["coordinator"]:
            raise ValueError(f"distributed.coordinator: must be host:port, got "
                             f"{explicit['coordinator']!r}")  # fmt: skip
        if n == 1:
            return None
        return {
            "coordinator_address": explicit["coordinator"],
            "num_processes": n,
            "process_id": i,
            "heartbeat_timeout_seconds": timeout,
        }
    if _cluster_detected():
        return {"heartbeat_timeout_seconds": timeout}  # JAX reads SLURM / Open MPI variables
    return None


def initialize(node: Mapping[str, Any] | None) -> bool:
    """Starts ``jax.distributed`` when this is one process of several; True if it did."""
    kwargs = settings(node)
    if kwargs is None:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service installs a SIGTERM handler Python cannot see, which swallows the
    # signal; jdo's own (jdo.train.preemption) checkpoints and stops instead.
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d (%d local devices of %d)", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())  # fmt: skip
    return True


def lost_processes(timeout_s: float) -> list[int] | None:
    """After a collective failed in a multi-process run: the ids of the processes the
    coordination service no longer sees alive (polled for up to ``timeout_s``, the heartbeat
    timeout); ``[0]`` if the coordination service itself (process 0) is gone; None if no
    process is known to be lost."""
    import jax
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        return None
    everyone = list(range(jax.process_count()))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            live = client.get_live_nodes(everyone)
        except Exception:  # the service runs in process 0
            return [0] if jax.process_index() != 0 else None
        lost = [i for i in everyone if i not in live]
        if lost or time.monotonic() > deadline:
            return lost or None
        time.sleep(0.25)
