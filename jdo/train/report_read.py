"""Reading run directories for study reports (:mod:`jdo.train.report`): every run under some
directories, each as its flat config, its command-line overrides and its metrics table.

A run directory is one holding ``metrics.jsonl`` or ``summary.json`` (what
:func:`jdo.train.run` writes) beside its config (``config.yaml``, else Hydra's
``.hydra/config.yaml``). Nothing here raises on a damaged run: a run is read as far as it
parses and marked partial with the reason; a directory that cannot be read is skipped with
the reason. Needs pandas (``pip install 'jdo[report]'``).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pandas as pd
import yaml

RUN_FILES = ("metrics.jsonl", "summary.json")
NOT_RUNS = {".hydra", "checkpoints", "tb", "wandb", "mlruns", "__pycache__"}


@dataclasses.dataclass
class Run:
    """One run: ``config`` flat (``{"optimizer.learning_rate": 0.1, ...}``), ``overrides``
    as typed on the command line (``{"optimizer": "sgd"}``, none recorded: empty),
    ``metrics`` one row per logged step (sorted, one row per step), ``final`` the last logged
    value of each metric, ``partial`` the reasons it is incomplete (empty: complete)."""

    path: str
    config: dict
    overrides: dict
    metrics: pd.DataFrame
    final: dict
    partial: list[str]
    notes: list[str]

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def last_step(self) -> int | None:
        return int(self.metrics["step"].iloc[-1]) if len(self.metrics) else None


@dataclasses.dataclass
class Skipped:
    path: str
    reason: str


class ReportError(ValueError):
    """Bad input to a report (a missing directory, an unknown metric): one line for the user."""


def find_runs(roots) -> tuple[list[Run], list[Skipped]]:
    """Every run under ``roots`` (run or multirun directories, searched recursively), read;
    directories that look like runs but cannot be read are returned as skipped."""
    runs, skipped, seen = [], [], set()
    for root in roots:
        if not os.path.isdir(root):
            raise ReportError(f"{root}: no such directory")
        for directory in _run_dirs(root):
            real = os.path.realpath(directory)
            if real in seen:  # the same run reached through two arguments
                continue
            seen.add(real)
            result = read_run(directory)
            (runs if isinstance(result, Run) else skipped).append(result)
    return runs, skipped


def _run_dirs(root: str):
    """Directories under ``root`` with a run's files (or a config without them: a run that
    failed before its first log, reported as skipped); a run's own subfolders are not
    searched."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in NOT_RUNS)
        has_config = "config.yaml" in files or os.path.isfile(
            os.path.join(directory, ".hydra", "config.yaml")
        )
        if any(f in files for f in RUN_FILES) or has_config:
            subdirs[:] = []
            yield directory


def read_run(directory: str) -> Run | Skipped:
    """One run directory, read as far as it parses (see the module docstring)."""
    config, where = _read_config(directory)
    if config is None:
        return Skipped(directory, where)
    if not any(os.path.isfile(os.path.join(directory, f)) for f in RUN_FILES):
        return Skipped(
            directory,
            "no metrics.jsonl or summary.json: it stopped before its first log interval "
            "(see its train.log)",
        )
    partial, notes = [], [] if where == "config.yaml" else [f"config from {where}"]
    summary = _read_summary(directory, partial)
    metrics = read_metrics(os.path.join(directory, "metrics.jsonl"), partial)
    resumed = (summary or {}).get("resumed_from")
    if resumed:
        step = resumed.get("step") if isinstance(resumed, dict) else resumed
        notes.append(f"resumed from step {step}")
    if os.path.isfile(os.path.join(directory, "metrics.jsonl.damaged")):
        notes.append("the runner moved damaged lines to metrics.jsonl.damaged")
    final = _final(metrics, summary)
    steps = config.get("trainer.steps")
    last = int(metrics["step"].iloc[-1]) if len(metrics) else final.get("steps")
    if isinstance(steps, int) and last is not None and last < steps:
        partial.append(f"logged up to step {last} of {steps}")
    overrides = _overrides(directory, summary)
    return Run(directory, config, overrides, metrics, final, partial, notes)


def _read_config(directory: str) -> tuple[dict | None, str]:
    """The flat config and where it came from, or None and why."""
    for name in ("config.yaml", os.path.join(".hydra", "config.yaml")):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            return None, f"{name} does not parse: {str(e).splitlines()[0]}"
        if not isinstance(tree, dict):
            return None, f"{name} is not a mapping"
        if name != "config.yaml":  # Hydra's copy keeps ${...} interpolations: resolve them
            tree = _resolved(tree)
        return flatten(tree), name
    return None, "no config.yaml (nor .hydra/config.yaml): cannot tell what was run"


def _resolved(tree: dict) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    except Exception:  # a resolver of another program: keep the interpolations as text
        return tree


def flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values (made hashable)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _read_summary(directory: str, partial: list[str]) -> dict | None:
    path = os.path.join(directory, "summary.json")
    if not os.path.isfile(path):
        partial.append("no summary.json (interrupted, or still running)")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        partial.append(f"summary.json does not parse ({e})")
        return None
    if not isinstance(summary, dict):
        partial.append("summary.json is not a JSON object")
        return None
    return summary


def read_metrics(path: str, partial: list[str] | None = None) -> pd.DataFrame:
    """``metrics.jsonl`` as a table, one row per step (the last line of a step wins: a resumed
    run's), sorted; lines that do not parse (cut short by a kill, damaged) are left out and
    counted into ``partial``. Non-finite values (written as text) become floats."""
    partial = [] if partial is None else partial
    records, bad = [], []
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                record = _parse_line(line)
                if record is None and line.strip():
                    bad.append(number)
                elif record is not None:
                    records.append(record)
    if bad:
        where = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        partial.append(f"metrics.jsonl: {len(bad)} line(s) do not parse (line {where})")
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame({"step": []})
    frame = frame.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return frame.reset_index(drop=True)


def _parse_line(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return {k: v for k, v in ((k, _number(v)) for k, v in record.items()) if v is not None}


def _number(value) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):  # the tracker writes nan/inf as text
        try:
            number = float(value)
        except ValueError:
            return None
        return number
    return None


def _final(metrics: pd.DataFrame, summary: dict | None) -> dict:
    """The last logged value of each metric (eval metrics are logged less often than train
    ones); without metrics.jsonl, the summary's numbers."""
    if len(metrics):
        return {
            k: float(column.dropna().iloc[-1])
            for k, column in metrics.items()
            if column.notna().any()
        }
    if summary:
        return {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return {}


def _overrides(directory: str, summary: dict | None) -> dict:
    """The command line's overrides (``key=value``; ``+``/``++`` dropped, ``hydra.*`` left
    out): from summary.json, else Hydra's .hydra/overrides.yaml, else none."""
    lines = (summary or {}).get("overrides")
    path = os.path.join(directory, ".hydra", "overrides.yaml")
    if not lines and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                lines = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            lines = None
    out = {}
    for item in lines if isinstance(lines, list) else []:
        key, eq, value = str(item).partition("=")
        key = key.lstrip("+")
        if key.startswith(("hydra.", "hydra/")):
            continue
        if key.startswith("~"):
            out[key[1:]] = "(deleted)"
        elif eq:
            out[key] = value
    return out
