"""Preemption: SIGTERM / SIGUSR2 / SIGINT (Ctrl-C) ask the runner to checkpoint at the next call
boundary (a second Ctrl-C interrupts at once).

The runner saves, then re-raises the signal's previous handler if there was one (e.g.
submitit's, which requeues the SLURM job), else raises :class:`Preempted`, which
``jdo.train.cli`` turns into exit status :data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
import threading

# Exit statuses of ``python -m experiments.train`` (documented in the README).
EXIT_CONFIG = 2  # bad configuration or input: nothing ran, nothing was written over
EXIT_NONFINITE = 3  # a NaN/inf loss or update with trainer.nonfinite=stop
EXIT_PEER_LOST = 4  # multi-process: another process died; rerun all of them to resume
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGUSR2 after a checkpoint; rerun to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped by Ctrl-C after a checkpoint; rerun to resume

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def agree(flag: bool) -> bool:
    """True on every process if it is True on any (a signal reaches processes at different
    steps; they must stop at the same boundary or their collectives would not match)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class Preempted(Exception):
    """Training stopped on a signal after checkpointing ``step`` (``None``: no checkpoint)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        if checkpoint:
            then = f"checkpoint {checkpoint}; run the same command again to resume"
        else:
            then = "no checkpoint (checkpointing is off): the run cannot be resumed"
        super().__init__(
            f"{signal.Signals(signum).name} received: stopped at step {step} with {then}"
        )
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class PreemptionWatch:
    """Records SIGTERM/SIGUSR2 while active (a context manager; main thread only, elsewhere
    it watches nothing). ``signum`` is the first signal received, or None."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def hand_on(self) -> None:
        """Calls the handler that was installed before ours for the received signal (after
        the checkpoint is committed), so a launcher's own logic (requeue) still runs."""
        previous = self._previous.get(self.signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)  # Python's own SIGINT handler would raise instead
