"""An event list as the constant per-update arrays the simulated parameter server replays
(host-side numpy): who is applied at each update, with what staleness, who pulls the new
version, the running staleness and traffic statistics and every worker's simulated clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jdo import checks
from jdo.asynchrony.schedule import COMM, COMPUTE, WAIT, Event

# Leading entries of the statistics vector; the staleness histogram follows. ``messages`` counts
# the pushes and pulls (two per gradient that reached the server, dropped ones included: the
# worker pushed it and pulls after it); ``message_hi + message_lo`` is the bytes of one message
# (a constant, split in two float32 so it stays exact; NaN when not known).
STATS = ("updates", "gradients", "dropped", "staleness_sum", "messages", "message_hi", "message_lo")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per update ``u`` (which produces version ``u + 1``) and worker ``i``.

    Attributes:
      applied: ``[U, W]`` bool, worker i's gradient is in update u's average.
      staleness: ``[U, W]`` int32, its staleness (0 where nothing arrives).
      pull: ``[U, W]`` bool, worker i reads version ``u + 1`` (the copy its next gradient is
        computed on).
      stats: ``[U, 7 + H]`` float32, running totals after update u: ``STATS`` (the bytes of one
        message are a constant) then the count of applied gradients of staleness
        ``0 .. H - 1``.
      clock: ``[U, W, 9]`` float32, every worker's clock at update u's time in the layout of
        :func:`jdo.system.clock.as_vector`; None when the events carry no timelines.
    """

    applied: np.ndarray
    staleness: np.ndarray
    pull: np.ndarray
    stats: np.ndarray
    clock: np.ndarray | None = None

    @property
    def num_updates(self) -> int:
        return self.applied.shape[0]


def make_plan(
    events: Sequence[Event],
    num_workers: int,
    max_staleness: int | None = None,
    update_times=None,
    segments=None,
    message_bytes: float | None = None,
) -> Plan:
    """The :class:`Plan` of ``events`` (a :func:`jdo.asynchrony.schedule`, or any list where
    each worker reads a version no older than its previous update and older than its own).
    Gradients staler than ``max_staleness`` are dropped (the update goes on without them).
    ``message_bytes``: the bytes of one push or pull, for the wire-traffic statistics (None:
    not known, and :func:`stats_record` reports no ``bytes/wire_*``)."""
    num_updates = max((e.applied_version for e in events), default=0)
    if not num_updates:
        raise checks.InvalidArgument("events", "must not be empty")
    shape = (num_updates, num_workers)
    applied, staleness, pull = (
        np.zeros(shape, bool),
        np.zeros(shape, np.int32),
        np.zeros(shape, bool),
    )
    last = np.zeros(num_workers, np.int64)  # the version each worker's last update produced
    for e in sorted(events, key=lambda e: (e.worker, e.applied_version)):
        w, r, a = e.worker, e.read_version, e.applied_version
        if not 0 <= w < num_workers or not last[w] <= r < a:
            raise checks.InvalidArgument(
                "events",
                f"has {e}: a worker reads a version no older than its previous update "
                f"({int(last[w]) if 0 <= w < num_workers else '?'}) and older than its own, "
                f"for workers 0..{num_workers - 1}",
            )
        applied[a - 1, w], staleness[a - 1, w], last[w] = True, a - 1 - r, a
        if r:
            pull[r - 1, w] = True
    if max_staleness is not None:
        checks.non_negative_int("max_staleness", max_staleness)
    if message_bytes is not None:
        checks.non_negative("message_bytes", message_bytes)
    kept = applied & (staleness <= (np.inf if max_staleness is None else max_staleness))
    stats = _stats(applied, kept, staleness, message_bytes)
    clock = None if segments is None else clocks(np.asarray(update_times), segments)
    return Plan(kept, np.where(applied, staleness, 0).astype(np.int32), pull, stats, clock)


def _stats(applied, kept, staleness, message_bytes) -> np.ndarray:
    height = int(staleness[applied].max(initial=0)) + 1
    hist = np.zeros((applied.shape[0], height), np.float64)
    rows, cols = np.nonzero(kept)
    np.add.at(hist, (rows, staleness[rows, cols]), 1.0)
    per_update = np.stack(
        [
            np.ones(applied.shape[0]),
            kept.sum(axis=1),
            (applied & ~kept).sum(axis=1),
            np.where(kept, staleness, 0).sum(axis=1),
            2 * applied.sum(axis=1),  # a push and a pull per gradient that reached the server
            np.zeros(applied.shape[0]),
            np.zeros(applied.shape[0]),
        ],
        axis=1,
    )
    out = np.cumsum(np.concatenate([per_update, hist], axis=1), axis=0).astype(np.float32)
    nbytes = np.nan if message_bytes is None else float(message_bytes)
    hi = np.float32(nbytes)
    out[:, STATS.index("message_hi")] = hi
    out[:, STATS.index("message_lo")] = np.float32(nbytes - np.float64(hi))  # NaN: unknown
    return out


def stats_record(vector) -> dict[str, float]:
    """Host side: the metrics of one statistics vector (a :class:`Plan` ``stats`` row):
    ``asynchrony/updates``, ``asynchrony/gradients`` (applied), ``asynchrony/dropped``,
    ``asynchrony/messages`` (pushes + pulls), ``staleness/mean`` (over the applied gradients)
    and ``staleness/k`` (counts), all since the run began; and, when the plan knows the bytes
    of a message, the simulated wire traffic of the server's pushes and pulls:
    ``bytes/wire_total`` (messages x message bytes, all workers together) and
    ``bytes/wire_per_update`` (that over the updates)."""
    v = np.asarray(vector, np.float64)
    totals = dict(zip(STATS, v[: len(STATS)], strict=True))
    names = ("updates", "gradients", "dropped", "messages")
    record = {f"asynchrony/{k}": float(totals[k]) for k in names}
    record["staleness/mean"] = float(totals["staleness_sum"] / max(totals["gradients"], 1.0))
    message = totals["message_hi"] + totals["message_lo"]
    if np.isfinite(message):
        record["bytes/wire_total"] = float(totals["messages"] * message)
        record["bytes/wire_per_update"] = record["bytes/wire_total"] / max(totals["updates"], 1.0)
    for k, count in enumerate(v[len(STATS) :]):
        record[f"staleness/{k}"] = float(count)
    return record


def clocks(update_times: np.ndarray, segments: Sequence[np.ndarray]) -> np.ndarray:
    """``[U, W, 9]`` float32: each worker's clock at every update's time, as
    :func:`jdo.system.clock.as_vector` lays it out (``now`` is the update's time; compute,
    comm and wait are the worker's time in each up to then, read off its timeline)."""
    out = np.zeros((len(update_times), len(segments), 9), np.float32)
    for w, seg in enumerate(segments):
        knots = np.concatenate([[0.0], seg[:, 1]])
        parts = [update_times]
        for kind in (COMPUTE, COMM, WAIT):
            spent = np.concatenate(
                [[0.0], np.cumsum((seg[:, 1] - seg[:, 0]) * (seg[:, 2] == kind))]
            )
            parts.append(np.interp(update_times, knots, spent))
        for j, value in enumerate(parts):  # double-float pairs, as the clock keeps them
            hi = value.astype(np.float32)
            out[:, w, 2 * j], out[:, w, 2 * j + 1] = hi, (value - hi).astype(np.float32)
    out[:, :, 8] = np.arange(1, len(update_times) + 1, dtype=np.float32)[:, None]
    return out
