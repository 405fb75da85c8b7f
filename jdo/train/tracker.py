"""Where metrics go: a JSONL file (always), and the trackers chosen with ``logger=[...]``
(TensorBoard, MLflow, Weights & Biases offline); see :func:`make_trackers`."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol

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

    ``resume_step``: events after it (from before an interruption) are purged. ``config``: its
    scalar values go to the HParams dashboard and the whole config to a text summary, once, when
    the run starts from step 0.
    """

    def __init__(self, logdir: str, resume_step: int | None = None, config: Mapping | None = None):
        try:
            from tensorboardX import SummaryWriter
            from tensorboardX.summary import hparams
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(missing_extra("tensorboard")) from e
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(logdir, purge_step=purge)
        if config and not resume_step:
            flat = flat_config(config)
            for summary in hparams(flat, {}):
                self._writer._get_file_writer().add_summary(summary)
            text = "\n".join(f"    {k}: {v}" for k, v in flat.items())  # markdown: code block
            self._writer.add_text("config", text, 0)

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


# ----------------------------------------------------------------------------------------------
# Trackers chosen from the config: logger=[tensorboard,mlflow,wandb] (jsonl is always written)
# ----------------------------------------------------------------------------------------------

# tracker -> (module it imports, the package that provides it, the settings its node may have)
TRACKERS: dict[str, tuple[str | None, str | None, tuple[str, ...]]] = {
    "jsonl": (None, None, ()),
    "tensorboard": ("tensorboardX", "tensorboardX", ("dir",)),
    "mlflow": ("mlflow", "mlflow-skinny", ("tracking_uri", "experiment", "run_name")),
    "wandb": ("wandb", "wandb", ("project", "entity", "name", "group")),
}


class TrackerConfigError(ValueError):
    """A bad ``logger`` node: ``key`` names the setting (``jdo.train.config`` turns it into a
    ``ConfigError``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def missing_extra(name: str) -> str:
    """The one line a tracker whose package is not installed gives."""
    module, package, _ = TRACKERS[name]
    return f"logger={name} needs {package} (import {module}): pip install 'jdo[{name}]'"


def importable(module: str) -> bool:
    """Whether ``import module`` would find it (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def check_logger(logger: Mapping | None) -> list[str]:
    """The trackers ``logger`` selects (``jsonl`` first, always); raises
    :class:`TrackerConfigError` for an unknown tracker or setting, the old
    ``logger.tensorboard=true``, or a tracker whose package is not installed."""
    names = ["jsonl"]
    for name, node in (logger or {}).items():
        if name not in TRACKERS:
            raise TrackerConfigError(
                f"logger.{name}",
                f"unknown tracker; allowed: {', '.join(TRACKERS)} (chosen as a list: "
                "logger=[tensorboard,mlflow])",
            )
        if isinstance(node, bool) or node is None:  # the old logger.tensorboard: true
            raise TrackerConfigError(
                f"logger.{name}",
                f"trackers are chosen as a list now: logger=[{name}] (not logger.{name}=true)",
            )
        if not isinstance(node, Mapping):
            raise TrackerConfigError(f"logger.{name}", f"must be a mapping, got {node!r}")
        module, _, allowed = TRACKERS[name]
        unknown = sorted(set(node) - set(allowed))
        if unknown:
            raise TrackerConfigError(
                f"logger.{name}.{unknown[0]}",
                f"unknown key; allowed keys: {', '.join(allowed) or 'none'}",
            )
        if module is not None and not importable(module):
            raise TrackerConfigError("logger", missing_extra(name))
        if name != "jsonl":
            names.append(name)
    return names


def flat_config(config: Mapping | None, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optimizer.learning_rate": 0.1, ...}`` (lists as their text)."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out


def _read_id(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def _write_id(path: str, run_id: str) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(run_id + "\n")
    os.replace(f"{path}.tmp", path)


class MLflowTracker:
    """Metrics and the config's values (as params) to an MLflow run (``pip install
    'jdo[mlflow]'``).

    ``tracking_uri`` None: a file store in ``<output_dir>/mlruns`` (MLflow 3 keeps the file
    store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which this sets for file
    URIs: a sqlite store costs ~5 s of schema migrations per new database). The run id is kept
    in ``<output_dir>/mlflow_run_id``: a run resumed from a checkpoint (``resume_step`` > 0)
    continues the same MLflow run. MLflow cannot delete logged points, so the steps between the
    checkpoint and the interruption appear twice in its history (with the same values: a
    resumed run recomputes them bit-identically); params logged before are not logged again.
    """

    def __init__(
        self,
        output_dir: str,
        resume_step: int | None = None,
        config: Mapping | None = None,
        tracking_uri: str | None = None,
        experiment: str = "jdo",
        run_name: str | None = None,
    ):
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(missing_extra("mlflow")) from e
        output_dir = os.path.abspath(output_dir)
        uri = tracking_uri or "file://" + os.path.join(output_dir, "mlruns")
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = client = MlflowClient(tracking_uri=uri)
        id_path = os.path.join(output_dir, "mlflow_run_id")
        self.run_id = _read_id(id_path) if resume_step else None
        if self.run_id is not None:
            try:
                client.update_run(self.run_id, status="RUNNING")
            except MlflowException:
                log.warning("mlflow: run %s not found in %s: a new run", self.run_id, uri)
                self.run_id = None
        if self.run_id is None:
            found = client.get_experiment_by_name(experiment)
            try:
                eid = found.experiment_id if found else client.create_experiment(experiment)
            except MlflowException:  # made meanwhile by a parallel job
                eid = client.get_experiment_by_name(experiment).experiment_id
            name = run_name or os.path.basename(output_dir)
            self.run_id = client.create_run(eid, run_name=name).info.run_id
            _write_id(id_path, self.run_id)
        self._log_params(flat_config(config))
        log.info("mlflow: run %s in %s", self.run_id, uri)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        changed = sorted(k for k in params if k in logged and logged[k] != str(params[k]))
        if changed:  # MLflow params are immutable
            log.warning("mlflow: params changed since the run began, not updated: %s", changed)
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=new[i : i + 100])

    def log(self, step, metrics):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def close(self):
        self._client.set_terminated(self.run_id)


class WandbTracker:
    """Metrics and the config to a Weights & Biases run in offline mode (``pip install
    'jdo[wandb]'``): files in ``<output_dir>/wandb/offline-run-*``, never a server (upload
    later with ``wandb sync <output_dir>/wandb/offline-run-*``).

    The run id is kept in ``<output_dir>/wandb_run_id``: a run resumed from a checkpoint
    (``resume_step`` > 0) logs to the same id (a new offline-run folder that ``wandb sync``
    appends to the same run). Offline, W&B cannot drop the steps logged after the checkpoint;
    on sync the server ignores re-logged steps that are not after its last one (the values are
    the same: a resumed run recomputes them bit-identically).
    """

    def __init__(
        self,
        output_dir: str,
        resume_step: int | None = None,
        config: Mapping | None = None,
        project: str = "jdo",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
    ):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(missing_extra("wandb")) from e
        import secrets

        output_dir = os.path.abspath(output_dir)
        id_path = os.path.join(output_dir, "wandb_run_id")
        self.run_id = (_read_id(id_path) if resume_step else None) or secrets.token_hex(4)
        _write_id(id_path, self.run_id)
        settings = wandb.Settings(mode="offline", console="off", silent=True, x_disable_stats=True)
        self._run = wandb.init(
            dir=output_dir,
            project=project,
            entity=entity,
            name=name or os.path.basename(output_dir),
            group=group,
            id=self.run_id,
            resume="allow",
            config=dict(config or {}),
            settings=settings,
            reinit="create_new",
        )

    def log(self, step, metrics):
        self._run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self):
        self._run.finish()


def make_trackers(
    output_dir: str,
    logger: Mapping | None,
    resume_step: int | None = None,
    config: Mapping | None = None,
) -> MultiTracker:
    """The run's trackers: ``<output_dir>/metrics.jsonl`` always, then each one ``logger``
    selects (``logger=[tensorboard,mlflow,wandb]``; each node holds that tracker's settings).
    ``resume_step``: where the run (re)starts (see each tracker); ``config``: the resolved
    config, logged as hyperparameters where the tracker has a place for them (TensorBoard's
    HParams and a text summary, MLflow params, the W&B run config)."""
    trackers: list[Tracker] = [JsonlTracker(os.path.join(output_dir, "metrics.jsonl"), resume_step)]
    try:
        for name in check_logger(logger)[1:]:
            node = dict(logger[name])
            if name == "tensorboard":
                logdir = os.path.join(output_dir, node.get("dir") or "tb")
                trackers.append(TensorBoardTracker(logdir, resume_step, config))
            elif name == "mlflow":
                trackers.append(MLflowTracker(output_dir, resume_step, config, **node))
            else:
                trackers.append(WandbTracker(output_dir, resume_step, config, **node))
    except BaseException:
        MultiTracker(trackers).close()
        raise
    return MultiTracker(trackers)
