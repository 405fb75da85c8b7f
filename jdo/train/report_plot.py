"""The plots of a study report (:mod:`jdo.train.report`), as PNG: the metrics against steps,
against bytes (``bytes/total``) and against simulated time (``time/total``, runs with a
``cluster``), one panel per metric, one line per group.

A group's seeds are aligned by step: the line is their mean at each logged step, the band
their min–max, and on the bytes and time axes a point sits at the seeds' mean x at that
step. Needs matplotlib (``pip install 'jdo[report]'``).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from jdo.train.report_table import BYTES, TIME, Study

AXES = (("step", "step"), (BYTES, "bytes sent per worker"), (TIME, "simulated time (s)"))
LOSSES = ("eval/avg_model/loss", "train/loss")
ACCURACIES = ("eval/avg_model/accuracy", "train/accuracy")


def panels(study: Study) -> list[str]:
    """The metrics plotted: the report's metric, a loss and an accuracy (eval when logged)."""
    logged = set().union(*(run.metrics.columns for run in study.runs))
    loss = next((k for k in LOSSES if k in logged), None)
    accuracy = next((k for k in ACCURACIES if k in logged), None)
    return [k for k in dict.fromkeys([study.metric, loss, accuracy]) if k is not None]


def plot_study(study: Study, out: str) -> list[tuple[str, str]]:
    """Writes one PNG per x axis that some run logs into ``out``; returns (title, file name)
    pairs."""
    metrics = panels(study)
    written = []
    for x, xlabel in AXES:
        if x != "step" and not any(x in run.metrics for run in study.runs):
            continue
        name = f"vs_{x.split('/')[0]}.png" if x != TIME else "vs_time.png"
        title = f"{', '.join(metrics)} vs {xlabel}"
        figure = _figure(study, metrics, x, xlabel)
        figure.savefig(os.path.join(out, name), dpi=100)
        written.append((title, name))
    return written


def _figure(study: Study, metrics: list[str], x: str, xlabel: str) -> Figure:
    figure = Figure(figsize=(5.0 * len(metrics), 3.8), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for group, frame in _curves(study, metric, x):
            (line,) = ax.plot(frame["x"], frame["mean"], label=group, marker=".", markersize=3)
            ax.fill_between(
                frame["x"], frame["min"], frame["max"], color=line.get_color(), alpha=0.2
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if _spans_decades(ax):
            ax.set_yscale("log")
        if metric == study.metric and study.target is not None:
            ax.axhline(study.target, color="gray", linestyle="--", linewidth=1, label="target")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize="small")
    figure.suptitle("mean over seeds, band: min–max", fontsize="small")
    return figure


def _curves(study: Study, metric: str, x: str):
    """(group label, frame of x/mean/min/max per step) for each group that logs ``metric``."""
    table = study.run_table
    by_path = {run.path: run for run in study.runs}
    for _, members in table.groupby("group", sort=True):
        frames = []
        for path in members["run"]:
            m = by_path[path].metrics
            if metric in m and x in m:
                frames.append(pd.DataFrame({"step": m["step"], "x": m[x], "y": m[metric]}))
        if not frames:
            continue
        data = pd.concat(frames).dropna(subset=["x", "y"])
        stats = data.groupby("step").agg(
            x=("x", "mean"), mean=("y", "mean"), min=("y", "min"), max=("y", "max")
        )
        yield _group_label(study, members), stats.reset_index()


def _group_label(study: Study, members: pd.DataFrame) -> str:
    first = members.iloc[0]
    parts = [f"{c}={first[c]}" for c in study.columns]
    return ", ".join(parts) or "all runs"


def _spans_decades(ax) -> bool:
    lines = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    values = np.concatenate(lines) if lines else np.zeros(0)
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > 100
