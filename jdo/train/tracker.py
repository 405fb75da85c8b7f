"""Where metrics go: a JSONL file (always), TensorBoard (optional), the terminal."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Protocol

log = logging.getLogger("jdo")


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def _jsonable(value):
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else str(value)


class JsonlTracker:
    """Appends one JSON object per logging step to ``path`` (``{"step": ..., **metrics}``).

    ``resume_step``: a run starting at this step (0, or a checkpoint's) first drops the lines
    of later steps (written by an interrupted earlier attempt; they are recomputed, and a
    resumed run logs the same values, so nothing is lost; the count is logged). A line that does
    not parse (cut short by a kill, or damaged) is never dropped: it is appended to
    ``<path>.damaged`` with a warning naming both files and the count.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is not None and os.path.exists(path):
            _truncate_after(path, resume_step)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step, metrics):
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def _line_step(line: str) -> float | None:
    """The step of a metrics line, or None if the line is damaged (not a JSON object with an
    integer step)."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _truncate_after(path: str, resume_step: int) -> None:
    """Keeps the lines of steps <= ``resume_step``; later ones are dropped (and counted),
    damaged ones appended to ``<path>.damaged`` before ``path`` is rewritten."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f]
    steps = [_line_step(line) for line in lines]
    damaged = [line for line, s in zip(lines, steps, strict=True) if s is None and line.strip()]
    kept = [
        line for line, s in zip(lines, steps, strict=True) if s is not None and s <= resume_step
    ]
    later = sum(s is not None and s > resume_step for s in steps)
    if damaged:  # first, so a kill below loses nothing
        with open(f"{path}.damaged", "a", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(damaged)
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "%s: %d damaged line%s (not JSON with a step) moved to %s.damaged",
            path,
            len(damaged),
            "" if len(damaged) == 1 else "s",
            path,
        )
    if later:
        log.info(
            "%s: dropped %d line%s of steps after %d (from an interrupted attempt; recomputed now)",
            path,
            later,
            "" if later == 1 else "s",
            resume_step,
        )
    if damaged or later:
        with open(f"{path}.tmp", "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(kept)
        os.replace(f"{path}.tmp", path)  # a kill before this loses nothing


class TensorBoardTracker:
    """Scalars to a TensorBoard event file (needs ``pip install 'jdo[tensorboard]'``).

    ``resume_step``: events after it (from before an interruption) are purged.
    """

    def __init__(self, logdir: str, resume_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                "logger.tensorboard=true needs tensorboardX: pip install 'jdo[tensorboard]'"
            ) from e
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(logdir, purge_step=purge)

    def log(self, step, metrics):
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), int(step))

    def close(self):
        self._writer.close()


class MultiTracker:
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step, metrics):
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def close(self):
        for tracker in self.trackers:
            tracker.close()
