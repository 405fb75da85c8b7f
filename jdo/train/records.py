"""Host-side metrics: one record per logging step, the console line, the progress display."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from jdo.asynchrony import stats_record
from jdo.system import clock as sim_clock

log = logging.getLogger("jdo")


def train_record(
    metrics,
    step: int,
    bytes_per_step: int,
    quiet_bytes: int,
    counters: Sequence[str] = (),
    mask=None,
    payload_bytes: int | None = None,
    device_bytes: int | None = None,
) -> dict[str, float]:
    """Host-side metrics of one logging interval (``metrics``: each ``[W, K]``; ``mask``: the
    ``[K]`` steps to average, None = all). ``counters`` (running totals such as RL's
    ``env_steps``) are read at the interval's end, not averaged. For algorithms that
    communicate on some steps only, ``bytes/step`` is a communicating step,
    ``bytes/step_quiet`` another step, and ``bytes/total`` the upper bound
    ``bytes/step · step``. Bytes are wire bytes (what one worker sends under the collective
    algorithm); ``payload_bytes``, the operands, is ``bytes/step_payload``; ``device_bytes``,
    what one device of this run sends per step (its compiled program), ``bytes/step_device``.
    A clocked run's
    ``clock`` metric (each ``[W, K, 9]``) gives the simulated ``time/*`` at the interval's
    end (:func:`jdo.system.clock.times`); a simulated asynchronous parameter server's
    ``asynchrony`` metric its updates, gradients, staleness histogram and the simulated wire
    traffic of its pushes and pulls, ``bytes/wire_total`` and ``bytes/wire_per_update``
    (:func:`jdo.asynchrony.stats_record`; ``bytes/step`` stays what the compiled SPMD step
    sends, the masked all-reduce that replays the server)."""
    clock, schedule = metrics.get("clock"), metrics.get("asynchrony")
    metrics = {k: v for k, v in metrics.items() if k not in ("clock", "asynchrony")}
    if mask is not None and not np.any(mask):  # every step of the interval was skipped
        mask = None
        metrics = {k: np.full(np.shape(v), np.nan) for k, v in metrics.items()}
    keep = (lambda v: v[:, mask]) if mask is not None else (lambda v: v)
    totals = {k: float(np.max(np.asarray(v)[:, -1])) for k, v in metrics.items() if k in counters}
    per_worker = {
        k: np.mean(keep(np.asarray(v, np.float64)), axis=-1)
        for k, v in metrics.items()
        if k not in counters
    }
    loss = per_worker.pop("loss")
    record = {
        "train/loss": float(loss.mean()),
        "train/loss_min": float(loss.min()),
        "train/loss_max": float(loss.max()),
    }
    record.update({f"train/{k}": float(v.mean()) for k, v in per_worker.items()})
    record.update({f"train/{k}": v for k, v in totals.items()})
    if clock is not None:
        record.update(sim_clock.times(np.asarray(clock)[:, -1]))
    if schedule is not None:  # a simulated asynchronous PS: its running totals
        record.update(stats_record(np.asarray(schedule)[0, -1]))
    record["bytes/step"] = int(bytes_per_step)
    if payload_bytes is not None:
        record["bytes/step_payload"] = int(payload_bytes)
    if device_bytes is not None:
        record["bytes/step_device"] = int(device_bytes)
    if quiet_bytes != bytes_per_step:
        record["bytes/step_quiet"] = int(quiet_bytes)
    record["bytes/total"] = int(bytes_per_step * step)
    return record


LINE_KEYS = (
    "train/loss",
    "eval/avg_model/loss",
    "eval/avg_model/accuracy",
    "eval/return",
    "eval/return_greedy",
    "consensus",
    "dist_to_opt",
    "steps_per_s",
    "time/total",
)


def line(step: int, record: Mapping[str, float], steps: int | None = None) -> str:
    """The console line of a record: ``step 250: loss 0.1 | eval/avg_model/accuracy 0.9``."""
    parts = [
        f"{k.split('/')[-1] if k.startswith('train') else k} {record[k]:.4g}"
        for k in LINE_KEYS
        if k in record
    ]
    of = f"/{steps}" if steps else ""
    return f"step {step}{of}: " + " | ".join(parts)


class Progress:
    """Where progress shows between evaluations: a tqdm bar on a terminal (log lines are
    routed around it), else a log line at least every ``every_s`` seconds."""

    def __init__(self, total: int, enabled: bool, every_s: float = 30.0):
        self.total, self.every_s = total, every_s
        self._last_line = time.perf_counter()
        self._bar, self._redirect = None, contextlib.nullcontext()
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=total, unit="step", dynamic_ncols=True, mininterval=0.5, leave=False
            )
            self._redirect = logging_redirect_tqdm(loggers=[log, logging.getLogger()])

    def __enter__(self):
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        if self._bar is not None:
            self._bar.close()

    def update(self, step: int, steps: int, record: Mapping[str, float], logged: bool) -> None:
        """After each logging interval; ``logged``: its line went to the log already."""
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{record['train/loss']:.4f}", sps=f"{record.get('steps_per_s', 0):.0f}"
            )
        elif logged:
            self._last_line = now
        elif now - self._last_line >= self.every_s:
            log.info("%s", line(step, record, steps))
            self._last_line = now
