"""Study reports: ``jdo-report DIR [DIR ...] [--out OUT] [--target X] [--metric M] [--by KEY
...]`` (``python -m experiments.report`` in a checkout) reads every run under the given run
and multirun directories and writes ``OUT/report.md`` (default OUT: the first DIR) with PNG
plots beside it, and the tables as ``runs.csv`` and ``groups.csv``.

The report lists the command, the runs read (partial ones with the reason: no summary.json,
lines of metrics.jsonl that do not parse, fewer steps than configured), the directories
skipped and why, a table with one row per group of seeds (final metrics as mean ± sample std,
ddof=1, over the seeds; with ``--target``, how many seeds reached it and the mean steps,
bytes and simulated time they took), and plots against steps, bytes and simulated time.
Grouping, the target's direction and the plots: :mod:`jdo.train.report_table`,
:mod:`jdo.train.report_plot`; reading runs: :mod:`jdo.train.report_read`.

Needs pandas and matplotlib: ``pip install 'jdo[report]'``. Exit status 0, or 2 with one line
on a bad input (a directory that does not exist or holds no run, an unknown metric or key).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import shlex
import sys

EXTRA = "pandas and matplotlib: pip install 'jdo[report]'"


def parser(prog: str = "jdo-report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="A report (report.md, PNG plots) of the runs under DIRs."
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories")
    p.add_argument("--out", help="where report.md and the plots go (default: the first DIR)")
    p.add_argument("--target", type=float, help="report steps/bytes/time to reach this value")
    p.add_argument(
        "--metric",
        help="the metric of the table and the target (default: eval/avg_model/accuracy "
        "where logged, else train/loss); names with accuracy/return/reward/score are "
        "higher-is-better, others lower-is-better",
    )
    p.add_argument("--by", nargs="+", metavar="KEY", help="group by these overrides or config keys")
    return p


def main(argv: list[str] | None = None, prog: str = "jdo-report") -> int:
    """The command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(prog).parse_args(argv)
    missing = [m for m in ("pandas", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"{prog}: error: reports need {EXTRA} ({', '.join(missing)} missing)", file=sys.stderr
        )
        return 2
    from jdo.train.report_read import ReportError

    try:
        path = report(
            args.dirs,
            args.out,
            args.target,
            args.metric,
            args.by,
            command=f"{prog} {shlex.join(argv)}",
        )
    except ReportError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cli() -> None:
    sys.exit(main())


def report(dirs, out=None, target=None, metric=None, by=None, command: str = "") -> str:
    """Reads the runs under ``dirs``, writes ``out/report.md`` (``out``: default ``dirs[0]``),
    the plots and the CSV tables; returns the path of report.md. Raises
    :class:`~jdo.train.report_read.ReportError` on bad input."""
    from jdo.train.report_plot import plot_study
    from jdo.train.report_read import ReportError, find_runs
    from jdo.train.report_table import study

    runs, skipped = find_runs(dirs)
    if not runs and not skipped:
        raise ReportError(f"no runs under {', '.join(dirs)} (no metrics.jsonl or summary.json)")
    result = study(runs, skipped, metric=metric, target=target, by=by)
    out = out or dirs[0]
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out: cannot write to {out}: {e.strerror}") from None
    plots = plot_study(result, out)
    result.run_table.to_csv(os.path.join(out, "runs.csv"), index=False)
    result.group_table.to_csv(os.path.join(out, "groups.csv"), index=False)
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(result, plots, command))
    return path


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def markdown(study, plots: list[tuple[str, str]], command: str = "") -> str:
    """The report's text: command, results, plots, runs read, runs skipped."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    partial = sum(bool(run.partial) for run in study.runs)
    lines = ["# Study report", "", f"`{command}` ({now})" if command else now, ""]
    lines += [
        f"{len(study.runs)} runs read ({partial} partial), {len(study.skipped)} skipped, "
        f"{len(study.group_table)} groups.",
        "",
        "## Results",
        "",
        *_legend(study),
        "",
        *_table(*_group_rows(study)),
        "",
        "## Plots",
        "",
    ]
    for title, name in plots:
        lines += [f"![{title}]({name})", ""]
    lines += ["## Runs read", "", *_table(*_run_rows(study)), ""]
    if study.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- `{s.path}`: {s.reason}" for s in study.skipped] + [""]
    return "\n".join(lines)


def _legend(study) -> list[str]:
    direction = "higher" if study.higher else "lower"
    grouped = ", ".join(f"`{c}`" for c in study.columns) or "nothing (one group)"
    text = [
        f"Metric `{study.metric}` ({direction} is better). Grouped by {grouped} (seed "
        "excluded). Final values are each run's last logged value; `mean ± std` over the "
        "group's runs, std the sample standard deviation (ddof=1), omitted for one run; a "
        "partial run counts with its last logged values, a run that never logged a metric "
        "is left out of its mean.",
    ]
    if study.target is not None:
        side = "at or above" if study.higher else "at or below"
        text += [
            "",
            f"Target: `{study.metric}` {side} {study.target:g} at a logged step; reached = "
            "runs that got there; steps, bytes (`bytes/total`, the wire bytes one worker "
            "sent) and simulated time (`time/total`) to the target are means over those runs.",
        ]
    return text


def _group_rows(study):
    g = study.group_table
    head = [*study.columns, "runs", *study.finals]
    rows = []
    for _, row in g.iterrows():
        runs = f"{row['runs']}" + (f" ({row['partial']} partial)" if row["partial"] else "")
        cells = [*(str(row[c]) for c in study.columns), runs]
        cells += [_mean_std(k, row[f"{k} mean"], row[f"{k} std"]) for k in study.finals]
        if study.target is not None:
            cells += [f"{row['reached']}/{row['runs']}"]
            cells += [_fmt(k, row[f"to_{k}"]) for k in ("steps", "bytes", "time")]
        rows.append(cells)
    if study.target is not None:
        head += ["reached", "steps to target", "bytes to target", "sim. time to target"]
    return head, rows


def _run_rows(study):
    head = ["run", "status", *study.columns, "seed", "last step", study.metric, "notes"]
    by_path = {run.path: run for run in study.runs}
    rows = []
    for _, row in study.run_table.iterrows():
        run = by_path[row["run"]]
        cells = [f"`{run.path}`", row["status"], *(str(row[c]) for c in study.columns)]
        cells += [str(run.seed), str(run.last_step), _fmt(study.metric, row[study.metric])]
        rows.append([*cells, "; ".join(run.partial + run.notes)])
    return head, rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|")
    lines = ["| " + " | ".join(map(escape, head)) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(map(escape, row)) + " |" for row in rows]


def _mean_std(key: str, mean: float, std: float) -> str:
    if math.isnan(std):
        return _fmt(key, mean)
    return f"{_fmt(key, mean)} ± {_fmt(key, std)}"


def _fmt(key: str, value) -> str:
    """Bytes in kB/MB/GB (decimal), times in seconds, others to 4 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    value = float(value)
    if key.startswith("bytes"):
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {unit}"
        return f"{value:.0f} B"
    if key.startswith("time"):
        return f"{value:.4g} s"
    if key == "steps":
        return f"{value:.6g}"
    return f"{value:.4g}"
