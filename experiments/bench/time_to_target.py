"""Time to target on simulated clusters: which method reaches a loss first, in simulated seconds.

    python -m experiments.bench.time_to_target [--workers 16] [--out experiments/bench/results]

Every run is what a user runs: ``jdo.train.run`` on the composed Hydra config (the same as
``python -m experiments.train algorithm=... cluster=... cluster/stragglers=...``), with its
``metrics.jsonl`` read back. Methods: all-reduce SGD, D-PSGD on a ring and on the one-peer
exponential graph, CHOCO-SGD with top-1% on a ring, local SGD with H = 16, DiLoCo (H = 64,
outer Nesterov) — all with plain SGD as the inner step and the same step size per problem.
Clusters: the ``datacenter``, ``cloud`` and ``edge`` presets (their links, collective algorithm
and, on ``edge``, device speeds), each without stragglers and with ``shifted_exponential`` ones
(c·(1 + X), X ~ Exp(mean 0.5)). Compute: ``cluster/compute=fixed`` at ``COMPUTE_S`` per step
(a mid-size model's step): these problems' own FLOPs take microseconds on the presets' devices,
which would leave nothing for a straggler to delay. Problems: l2-regularised logistic regression
(``task=logistic``) and the MLP on digits, 16 workers, plain SGD; target: the averaged model's
test loss ≤ ``LOGISTIC_TARGET`` / ``DIGITS_TARGET``, checked at every evaluation (every
``EVERY`` steps); the time is the latest worker's clock (``time/total``) there.

A method's loss curve does not depend on the cluster (the clock only observes the run), so each
(problem, method) trains to the same step on every cluster; what changes is what the steps cost.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments.bench.common import run_config, simulate_cpu_devices
from jdo.train.plan import ALGORITHMS

# display name -> overrides: the planner's algorithm set (jdo.train.plan.ALGORITHMS) where the
# two coincide, and one graph of this benchmark's own
METHODS = {
    "all-reduce SGD": ALGORITHMS["allreduce_sgd"],
    "D-PSGD ring": ALGORITHMS["dpsgd_ring"],
    "D-PSGD one-peer exp": ("algorithm=dpsgd", "topology=one_peer_exponential"),
    "CHOCO top-1%": ALGORITHMS["choco_sgd_topk"],
    "local SGD H=16": ALGORITHMS["local_sgd_h16"],
    "DiLoCo H=64": ALGORITHMS["diloco"],
}
CLUSTERS = ("datacenter", "cloud", "edge")
STRAGGLERS = ("none", "shifted_exponential")
EVERY = 16
LOGISTIC_TARGET = 0.37  # eval/avg_model/loss (every method levels off at 0.35-0.36)
DIGITS_TARGET = 0.25  # eval/avg_model/loss (DiLoCo's lowest is 0.22; the others reach 0.11)
COMPUTE_S = 0.01  # seconds per step of compute, on the fastest device (see the docstring)
PROBLEMS = {
    "logistic": (("task=logistic", "optimizer.learning_rate=0.5"), "eval/avg_model/loss", 512),
    "digits_mlp": (("task=digits", "model=mlp"), "eval/avg_model/loss", 512),
}


def target_of(problem: str) -> float:
    return LOGISTIC_TARGET if problem == "logistic" else DIGITS_TARGET


def run_one(overrides, steps: int, workers: int, every: int = EVERY) -> list[dict]:
    """``metrics.jsonl`` of one run of the composed config: ``workers`` workers, plain SGD,
    ``steps`` steps, logged and evaluated every ``every`` steps, no checkpoint, then
    ``overrides``."""
    common = (
        f"workers={workers}",
        "optimizer=sgd",
        f"trainer.steps={steps}",
        f"trainer.log_every={every}",
        f"trainer.eval_every={every}",
        "trainer.progress=false",
        "checkpoint=none",
    )
    return run_config([*common, *overrides])[1]


def system_overrides(
    cluster: str, compute_s: float, stragglers: str | None = None
) -> tuple[str, ...]:
    """The simulated system: the ``cluster`` preset, its ``stragglers`` (``None``: the preset's
    own, not overridden) and ``cluster/compute=fixed`` at ``compute_s`` seconds per step."""
    return (
        f"cluster={cluster}",
        *(() if stragglers is None else (f"cluster/stragglers={stragglers}",)),
        "cluster/compute=fixed",
        f"cluster.compute.seconds={compute_s}",
    )


def first_at_target(lines: list[dict], metric: str, target: float) -> dict | None:
    for line in lines:
        if metric in line and line[metric] <= target:
            return line
    return None


def measure(workers: int, problems, clusters=CLUSTERS) -> list[dict]:
    rows = []
    for problem in problems:
        base, metric, steps = PROBLEMS[problem]
        for method, overrides in METHODS.items():
            for cluster in clusters:
                for stragglers in STRAGGLERS:
                    system = system_overrides(cluster, COMPUTE_S, stragglers)
                    lines = run_one(
                        (*base, *overrides, *system),
                        steps,
                        workers,
                    )
                    hit = first_at_target(lines, metric, target_of(problem))
                    rows.append(
                        {
                            "problem": problem,
                            "method": method,
                            "cluster": cluster,
                            "stragglers": stragglers,
                            "steps": hit["step"] if hit else None,
                            "time_s": hit["time/total"] if hit else None,
                            "bytes_per_step": lines[-1]["bytes/step"],
                            "curve": [(x["time/total"], x.get(metric)) for x in lines],
                        }
                    )
                    print(
                        problem,
                        method,
                        cluster,
                        stragglers,
                        rows[-1]["steps"],
                        rows[-1]["time_s"],
                        flush=True,
                    )
    return rows


def table(rows: list[dict], problem: str) -> str:
    """Markdown: time to target (s) per method (rows) per cluster and stragglers (columns),
    with the fastest method of each column in bold."""
    clusters = [c for c in CLUSTERS if any(r["cluster"] == c for r in rows)]
    columns = [(c, s) for c in clusters for s in STRAGGLERS]
    head = "| method | steps | " + " | ".join(
        f"{c}{' + stragglers' if s != 'none' else ''}" for c, s in columns
    )
    lines = [head + " |", "|---" * (len(columns) + 2) + "|"]
    mine = [r for r in rows if r["problem"] == problem]
    best = {
        col: min(
            (r["time_s"] for r in mine if (r["cluster"], r["stragglers"]) == col and r["time_s"]),
            default=None,
        )
        for col in columns
    }
    for method in METHODS:
        cells, steps = [], "—"
        for col in columns:
            r = next(
                r for r in mine if r["method"] == method and (r["cluster"], r["stragglers"]) == col
            )
            steps = r["steps"] if r["steps"] is not None else "not reached"
            t = r["time_s"]
            text = "—" if t is None else f"{t:.3g}"
            cells.append(f"**{text}**" if t is not None and t == best[col] else text)
        lines.append(f"| {method} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in rows})
    clusters = [c for c in CLUSTERS if any(r["cluster"] == c for r in rows)]
    fig, axes = plt.subplots(
        len(problems),
        len(clusters),
        figsize=(4 * len(clusters), 3.2 * len(problems)),
        squeeze=False,
    )
    for i, problem in enumerate(problems):
        for j, cluster in enumerate(clusters):
            ax = axes[i][j]
            for r in rows:
                if (
                    r["problem"] == problem
                    and r["cluster"] == cluster
                    and r["stragglers"] == "none"
                ):
                    xs = [t for t, v in r["curve"] if v is not None]
                    ys = [v for _, v in r["curve"] if v is not None]
                    ax.plot(xs, ys, label=r["method"])
            ax.axhline(target_of(problem), color="grey", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{problem} on {cluster}")
            ax.set_xlabel("simulated time (s)")
            ax.set_ylabel("test loss of the averaged model")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--clusters", default=",".join(CLUSTERS))
    parser.add_argument("--out", default="experiments/bench/results")
    args = parser.parse_args()
    simulate_cpu_devices()
    rows = measure(args.workers, args.problems.split(","), args.clusters.split(","))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "time_to_target.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f)
    text = "\n\n".join(f"### {p}\n\n{table(rows, p)}" for p in args.problems.split(","))
    with open(os.path.join(args.out, "time_to_target.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(rows, os.path.join(args.out, "time_to_target.png"))
    print(text)


if __name__ == "__main__":
    main()
