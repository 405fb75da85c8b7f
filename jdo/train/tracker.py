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
    of later steps (written by an interrupted earlier attempt; they are about to be recomputed).
    """

    def __init__(self, path: str, resume_step: int | None = None):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if _line_step(line) <= resume_step]
            with open(f"{path}.tmp", "w", encoding="utf-8") as f:  # a kill here loses nothing
                f.writelines(kept)
            os.replace(f"{path}.tmp", path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step, metrics):
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return math.inf


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
