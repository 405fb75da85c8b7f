"""The tables of a study report (:mod:`jdo.train.report`): runs grouped by what differs between
them (seed left out), each group's final metrics as mean ± std over its seeds, and the steps,
bytes and simulated time it took to reach a target.

Groups are the configs: two runs are in one group when their resolved configs agree on every
key except ``seed`` (and keys that follow the seed, such as ``task.data.seed: ${seed}``).
The group's columns are named after the command line's overrides (``optimizer=sgd``) where
those account for the differences, else after the differing config keys. ``by`` names the
keys explicitly (an override or a config key; a config node such as ``optimizer`` means all
of its keys), pooling runs that differ elsewhere.

A target is reached at the first logged step where the metric is at or past it: at or below
for a lower-is-better metric, at or above for a higher-is-better one (a name whose last part
holds ``accuracy``, ``acc``, ``return``, ``reward``, ``score``, ``auc``, ``f1``, ``precision``
or ``recall``); bytes are ``bytes/total`` at that step (the wire bytes one worker sent,
``bytes/step · step``), simulated time ``time/total`` (runs with a ``cluster``).
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from jdo.train.report_read import ReportError, Run, Skipped

HIGHER_IS_BETTER = ("accuracy", "acc", "return", "reward", "score", "auc", "f1", "precision")
HIGHER_IS_BETTER += ("recall",)
DEFAULT_METRICS = ("eval/avg_model/accuracy", "train/loss")
FINAL_KEYS = (
    "train/loss",
    "eval/avg_model/loss",
    "eval/avg_model/accuracy",
    "dist_to_opt",
    "eval/return",
    "bytes/total",
    "time/total",
)
BYTES, TIME = "bytes/total", "time/total"
_MISSING = object()


@dataclasses.dataclass
class Study:
    """What a report shows: ``runs`` (one row per run) and ``groups`` (one row per group)."""

    runs: list[Run]
    skipped: list[Skipped]
    metric: str
    higher: bool
    target: float | None
    columns: list[str]  # the group columns (keys)
    finals: list[str]  # the final metrics shown
    run_table: pd.DataFrame
    group_table: pd.DataFrame


def higher_is_better(metric: str) -> bool:
    """The target's direction from the metric's name (see the module docstring)."""
    last = metric.rsplit("/", 1)[-1].lower()
    return any(word in last for word in HIGHER_IS_BETTER)


def study(
    runs: list[Run],
    skipped: list[Skipped],
    metric: str | None = None,
    target: float | None = None,
    by: list[str] | None = None,
) -> Study:
    """Groups ``runs`` and tabulates them (see the module docstring)."""
    if not runs:
        first = f"{skipped[0].path}: {skipped[0].reason}" if skipped else ""
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ReportError(f"no run could be read; {first}{more}")
    metric = metric or _default_metric(runs)
    _check_metric(runs, metric)
    columns, identity = _grouping(runs, by)
    finals = list(dict.fromkeys([metric, *(k for k in FINAL_KEYS if _logged(runs, k))]))
    higher = higher_is_better(metric)
    run_table = _run_table(runs, columns, identity, finals, metric, target, higher)
    group_table = _group_table(run_table, columns, finals, target)
    return Study(runs, skipped, metric, higher, target, columns, finals, run_table, group_table)


def _logged(runs: list[Run], key: str) -> bool:
    return any(key in run.final for run in runs)


def _default_metric(runs: list[Run]) -> str:
    return next((k for k in DEFAULT_METRICS if _logged(runs, k)), DEFAULT_METRICS[-1])


def _check_metric(runs: list[Run], metric: str) -> None:
    if _logged(runs, metric):
        return
    logged = sorted(set().union(*(run.final for run in runs)) - {"step"})
    logged = [k for k in logged if not k.startswith(("eval/workers", "bytes/step"))]
    some = ", ".join(logged[:12]) + (", ..." if len(logged) > 12 else "")
    raise ReportError(
        f"--metric: {metric!r} is logged by none of the {len(runs)} runs; they log: {some}"
    )


# ----------------------------------------------------------------------------------------------
# Groups
# ----------------------------------------------------------------------------------------------


def _grouping(runs: list[Run], by: list[str] | None):
    """The group columns and each run's group identity (a hashable tuple)."""
    if by:
        for key in by:
            _check_key(runs, key)
        return list(by), [tuple(_value(run, k) for k in by) for run in runs]
    differing = _differing(runs)
    identity = [tuple(repr(run.config.get(k, _MISSING)) for k in differing) for run in runs]
    columns = _override_columns(runs, differing)
    labelled = [tuple(_value(run, k) for k in columns) for run in runs]
    if len(set(zip(labelled, identity, strict=True))) != len(set(labelled)):
        # the overrides do not tell the groups apart: name the config keys they leave out
        columns += [k for k in differing if not any(_covers(c, k) for c in columns)]
    return columns, identity


def _differing(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between runs, but for the seed and keys following it."""
    keys = sorted(set().union(*(run.config for run in runs)))

    def follows_seed(key):  # in every run that has it
        return key == "seed" or all(
            run.config[key] == run.seed for run in runs if key in run.config
        )

    return [
        k
        for k in keys
        if len({repr(run.config.get(k, _MISSING)) for run in runs}) > 1 and not follows_seed(k)
    ]


def _covers(override: str, key: str) -> bool:
    return key == override or key.startswith(override + ".")


def _override_columns(runs: list[Run], differing: list[str]) -> list[str]:
    """Overrides whose values differ between runs and that change the config (or name no
    config key: a preset such as ``experiment=...``), in command-line order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides if k != "seed"))
    config_keys = set().union(*(run.config for run in runs))
    columns = []
    for key in keys:
        if len({run.overrides.get(key) for run in runs if run.overrides}) < 2:
            continue
        is_path = any(_covers(key, c) for c in config_keys)
        if not is_path or any(_covers(key, k) for k in differing):
            columns.append(key)
    return columns


def _check_key(runs: list[Run], key: str) -> None:
    if any(key in run.overrides or _subtree(run, key) for run in runs):
        return
    some = sorted({k for run in runs for k in run.overrides if k != "seed"})
    raise ReportError(
        f"--by: {key!r} is neither an override nor a config key of any run "
        f"(overrides: {', '.join(some) or 'none recorded'}; or a config key such as "
        "optimizer.learning_rate)"
    )


def _subtree(run: Run, key: str) -> dict:
    return {k: v for k, v in run.config.items() if _covers(key, k)}


def _value(run: Run, key: str):
    """What ``key`` is in this run: the config's values under it, else the override."""
    subtree = _subtree(run, key)
    if subtree:
        return repr(sorted(subtree.items()))
    return run.overrides.get(key)


def label(runs: list[Run], key: str) -> str:
    """A group's value of column ``key``: as typed on the command line where recorded, else
    the config's value (a node: its ``_target_``)."""
    typed = sorted({run.overrides[key] for run in runs if key in run.overrides})
    if typed:
        return "/".join(typed)
    values = {
        str(run.config.get(key, run.config.get(f"{key}._target_", "(default)"))) for run in runs
    }
    return "/".join(sorted(values))


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def reach(run: Run, metric: str, target: float, higher: bool) -> dict | None:
    """The first logged step at or past ``target`` with its ``bytes/total`` and
    ``time/total`` (NaN where not logged); None if the run never got there."""
    m = run.metrics
    if metric not in m:
        return None
    hit = m[metric] >= target if higher else m[metric] <= target
    if not hit.any():
        return None
    row = m[hit].iloc[0]
    return {
        "steps": float(row["step"]),
        "bytes": float(row.get(BYTES, float("nan"))),
        "time": float(row.get(TIME, float("nan"))),
    }


def _run_table(runs, columns, identity, finals, metric, target, higher) -> pd.DataFrame:
    groups = {key: i for i, key in enumerate(dict.fromkeys(identity))}
    members = {}
    for run, key in zip(runs, identity, strict=True):
        members.setdefault(groups[key], []).append(run)
    rows = []
    for run, key in zip(runs, identity, strict=True):
        group = groups[key]
        row = {"group": group, **{c: label(members[group], c) for c in columns}}
        row.update(run=run.path, seed=run.seed, last_step=run.last_step)
        row.update(status="partial" if run.partial else "complete")
        row.update({k: run.final.get(k, float("nan")) for k in finals})
        if target is not None:
            hit = reach(run, metric, target, higher)
            row["reached"] = hit is not None
            row.update({f"to_{k}": v for k, v in (hit or {}).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    for k in ("to_steps", "to_bytes", "to_time"):
        if target is not None and k not in table:
            table[k] = float("nan")
    return table.sort_values(["group", "seed"], kind="stable").reset_index(drop=True)


def _group_table(run_table: pd.DataFrame, columns, finals, target) -> pd.DataFrame:
    """One row per group: its labels, ``runs``, ``partial``, the mean and the sample standard
    deviation (ddof=1; NaN for one run) of each final metric over the group's runs, and with
    a target ``reached`` (runs) and the mean ``to_*`` over the runs that reached it."""
    grouped = run_table.groupby("group", sort=True)
    table = grouped[columns].first() if columns else pd.DataFrame(index=grouped.size().index)
    table["runs"] = grouped.size()
    table["partial"] = grouped["status"].apply(lambda s: int((s == "partial").sum()))
    for key in finals:
        table[f"{key} mean"] = grouped[key].mean()
        table[f"{key} std"] = grouped[key].std(ddof=1)
    if target is not None:
        table["reached"] = grouped["reached"].sum().astype(int)
        for k in ("to_steps", "to_bytes", "to_time"):
            table[k] = grouped[k].mean()  # NaN (the runs that missed) left out
    return table.reset_index()
