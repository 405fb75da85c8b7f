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
    """Appends one JSON object per logging step to ``path`` (``{"step": ..., **metrics}``)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step, metrics):
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


class TensorBoardTracker:
    """Scalars to a TensorBoard event file (needs ``pip install 'jdo[tensorboard]'``)."""

    def __init__(self, logdir: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                "logger.tensorboard=true needs tensorboardX: pip install 'jdo[tensorboard]'"
            ) from e
        self._writer = SummaryWriter(logdir)

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
