"""Multi-process runs on JAX's own multi-controller runtime (``jax.distributed``).

Where the processes come from, in order: the ``distributed`` config node; the environment
variables ``JDO_COORDINATOR`` / ``JDO_NUM_PROCESSES`` / ``JDO_PROCESS_ID`` (set by
``python -m experiments.launch``); SLURM or Open MPI, detected by JAX itself. On CPU the
collectives go over gloo. Must run before anything else touches JAX's backends.

A lost process: every process runs a :class:`Watchdog` thread that heartbeats through the
coordination service's key-value store and exits with status 4 (``EXIT_PEER_LOST``) and one
line naming the lost process once a peer's heartbeat is ``heartbeat_timeout_s`` old. JAX's own
heartbeat timeout is set above it (:func:`jax_heartbeat_timeout`), since JAX's coordination
agent aborts the process (SIGABRT) when it notices first. The loss of process 0, which hosts
the coordination service, is noticed by JAX's agent at once and aborts the others; a SIGABRT
hook (:func:`install_abort_hook`) turns that abort into the same exit 4 when process 0's
address no longer answers (JAX's own fatal message and stack are printed before it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from jdo.train.preemption import EXIT_PEER_LOST

log = logging.getLogger("jdo")

ENV = {
    "coordinator": "JDO_COORDINATOR",
    "num_processes": "JDO_NUM_PROCESSES",
    "process_id": "JDO_PROCESS_ID",
}


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
        raise ValueError(
            f"distributed.heartbeat_timeout_s: must be a positive integer, got {timeout!r}"
        )
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(
            f"distributed.{missing[0]}: is required when "
            f"distributed.{given[0]} is set (or set {ENV[missing[0]]})"
        )
    if given:
        n, i = explicit["num_processes"], explicit["process_id"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"distributed.num_processes: must be a positive integer, got {n!r}")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"distributed.process_id: must be in 0..{n - 1}, got {i!r}")
        if not isinstance(explicit["coordinator"], str) or ":" not in explicit["coordinator"]:
            raise ValueError(
                f"distributed.coordinator: must be host:port, got {explicit['coordinator']!r}"
            )
        if n == 1:
            return None
        return {
            "coordinator_address": explicit["coordinator"],
            "num_processes": n,
            "process_id": i,
            "heartbeat_timeout_seconds": jax_heartbeat_timeout(timeout),
        }
    if _cluster_detected():  # JAX reads SLURM / Open MPI variables
        return {"heartbeat_timeout_seconds": jax_heartbeat_timeout(timeout)}
    return None


def jax_heartbeat_timeout(timeout_s: int) -> int:
    """JAX's heartbeat timeout for jdo's ``timeout_s``: far enough above it that jdo's
    watchdog (which names the lost process and exits with status 4) notices first, even on a
    loaded machine; JAX's (an abort) stays as the fallback."""
    return 2 * timeout_s + 10


def initialize(node: Mapping[str, Any] | None) -> bool:
    """Starts ``jax.distributed`` when this is one process of several, then jdo's
    :class:`Watchdog` and abort hook; True if it did."""
    kwargs = settings(node)
    if kwargs is None:
        return False
    import jax
    from jax._src import distributed as jax_distributed

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service installs a SIGTERM handler Python cannot see, which swallows the
    # signal; jdo's own (jdo.train.preemption) checkpoints and stops instead.
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(**kwargs)
    timeout = dict(node or {}).get("heartbeat_timeout_s", 20)
    state = jax_distributed.global_state
    global _watchdog
    _watchdog = Watchdog(state.client, jax.process_index(), jax.process_count(), timeout)
    _watchdog.start()
    if jax.process_index() != 0:
        install_abort_hook(state.coordinator_address, jax.process_index())
    return True


def finish() -> None:
    """Tells the other processes this one stops on purpose (done, preempted, or a failure
    every process shares), so its silence is not a loss; stops the watchdog and the abort
    hook. Call before a multi-process run's process exits normally."""
    if _watchdog is not None:
        _watchdog.stop(done=True)
    remove_abort_hook()


def meet(name: str, timeout_s: float = 1800.0) -> None:
    """Every process of a multi-process run waits here until all have arrived (the
    coordination service's barrier ``jdo/<name>``); nothing in a single-process run. Called
    once compiling is done: the first collective then starts on every process together. Gloo
    gives the processes a fixed 30 s to meet for its first collective (its context's
    key-value wait), and on a loaded machine one process finished compiling more than 30 s
    after the other (seen here: "Gloo context initialization failed: ... timed out"). A
    process lost meanwhile is named by the :class:`Watchdog`."""
    if _watchdog is None:
        return
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(f"jdo/{name}", int(1000 * timeout_s))


def await_watchdog(timeout_s: float) -> None:
    """After a collective failed: gives the watchdog up to ``timeout_s`` to name a lost peer
    (it ends the process with status 4); returns if it finds none, or if there is none."""
    if _watchdog is not None and _watchdog.running():
        _watchdog.wait(timeout_s)


# ----------------------------------------------------------------------------------------------
# Lost processes
# ----------------------------------------------------------------------------------------------

_watchdog: Watchdog | None = None
_exiting = threading.Lock()
ALIVE = "jdo/alive/"  # key prefix in the coordination service's key-value store
DONE = "done"
SUSPECT_S = 5.0  # heartbeat silence that names a peer lost once a collective has failed


def exit_peer_lost(me: int, lost: list[int], why: str, *, use_logging: bool = True) -> None:
    """Prints one line naming the lost processes and ends this process with status 4 at once
    (JAX's shutdown would wait for the lost peer). The first caller wins; another blocks until
    the process is gone. ``use_logging=False`` in a signal handler (no logging locks)."""
    _exiting.acquire()
    who = ", ".join(map(str, lost))
    message = (
        f"process {me}: lost process {who} ({why}); stopping. Rerun all processes to resume "
        "from the last checkpoint"
    )
    os.write(2, f"error: {message}\n".encode())
    if use_logging:
        log.error(message)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
    os._exit(EXIT_PEER_LOST)


class Watchdog:
    """jdo's liveness check of the other processes, through the coordination service.

    Every ``period`` seconds (``timeout_s / 10``, at most 1) a daemon thread bumps this
    process's counter under ``jdo/alive/<id>`` and reads everyone's; a peer whose counter has
    not changed for ``timeout_s`` (measured on this process's clock) is lost, and so is
    process 0 when its service does not answer: :func:`exit_peer_lost`. Once a collective has
    failed (:meth:`wait`), ``SUSPECT_S`` without a heartbeat is enough: a killed peer is named
    within seconds instead of ``timeout_s``, and a live one, whose counter keeps moving, never
    is. A process that stops on purpose writes ``done`` (:func:`finish`). The thread also
    falls silent once the main thread has ended (the interpreter is exiting after an error),
    so the others do not wait on a process that will never join their next collective.
    """

    def __init__(self, client, me: int, count: int, timeout_s: float):
        self.client, self.me, self.count, self.timeout_s = client, me, count, timeout_s
        self.period = min(1.0, timeout_s / 10)
        self.longest_gap = 0.0  # the longest time between two rounds (GIL, a loaded machine)
        self.suspect = False  # a collective failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jdo-watchdog", daemon=True)

    def start(self) -> None:
        self._beat(0)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout_s: float) -> None:
        """Waits (up to ``timeout_s``) for a verdict after a collective failed."""
        self.suspect = True
        self._thread.join(timeout_s)

    def stop(self, done: bool) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5 * self.period + 5)
        if done:
            try:
                self.client.key_value_set(f"{ALIVE}{self.me}", DONE, allow_overwrite=True)
            except Exception:  # the service is gone: nobody is left to tell
                pass
        log.debug("watchdog: longest gap between rounds %.2f s", self.longest_gap)

    def _beat(self, counter: int) -> dict[int, str]:
        self.client.key_value_set(f"{ALIVE}{self.me}", str(counter), allow_overwrite=True)
        return {int(k.rsplit("/", 1)[1]): v for k, v in self.client.key_value_dir_get(ALIVE)}

    def _run(self) -> None:
        others = [i for i in range(self.count) if i != self.me]
        seen = {i: None for i in others}
        changed = dict.fromkeys(others, time.monotonic())
        counter, last = 0, time.monotonic()
        while not self._stop.wait(self.period):
            if not threading.main_thread().is_alive():
                return  # exiting after an error: fall silent so the others stop too
            now = time.monotonic()
            self.longest_gap, last = max(self.longest_gap, now - last), now
            counter += 1
            try:
                values = self._beat(counter)
            except Exception as e:
                if self._stop.is_set() or self.me == 0:
                    return
                first = " ".join(str(e).split())[:200]
                exit_peer_lost(self.me, [0], f"its coordination service does not answer: {first}")
                return  # (exit_peer_lost does not return)
            now = time.monotonic()
            limit = self.timeout_s
            if self.suspect:
                limit = min(limit, max(SUSPECT_S, 5 * self.period))
            lost = []
            for i in others:
                if values.get(i) == DONE:
                    continue
                if values.get(i) != seen[i]:
                    seen[i], changed[i] = values.get(i), now
                elif now - changed[i] > limit:
                    lost.append(i)
            if lost and not self._stop.is_set():
                silent = max(now - changed[i] for i in lost)
                after = " after a failed collective" if limit < self.timeout_s else ""
                exit_peer_lost(self.me, lost, f"no heartbeat for {silent:.0f} s{after}")
                return


# ----------------------------------------------------------------------------------------------
# SIGABRT from JAX's coordination agent when process 0 is gone
# ----------------------------------------------------------------------------------------------

_ABORT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
_abort_hook = None  # the installed C callback (kept alive here)


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def install_abort_hook(coordinator: str, me: int) -> None:
    """Handles SIGABRT in C (through ctypes) on processes other than 0: JAX's coordination
    agent aborts the process the moment process 0 (its service) goes away, before any Python
    code of ours can run. If process 0's address refuses connections, the hook reports
    process 0 lost and exits with status 4; for any other abort it returns, and the abort
    proceeds as before (status -6)."""
    global _abort_hook

    def on_abort(signum):
        if not _reachable(coordinator):
            why = "JAX's coordination service stopped and its address no longer answers"
            exit_peer_lost(me, [0], why, use_logging=False)

    try:
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, _ABORT_HANDLER]
        _abort_hook = _ABORT_HANDLER(on_abort)
        libc.signal(signal.SIGABRT, _abort_hook)
    except (OSError, AttributeError) as e:  # no C library to call: JAX's abort stays as is
        log.debug("no SIGABRT hook: %s", e)
        return
    import atexit

    atexit.register(remove_abort_hook)  # runs before JAX's own atexit shutdown


def remove_abort_hook() -> None:
    """Restores the default SIGABRT action (before the interpreter finalises)."""
    if _abort_hook is not None:
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
