"""The planner's ranking against what the algorithms achieve: 3 clusters x 2 problems x 6
algorithms.

    nice -n 19 python -m experiments.bench.plan [--out experiments/bench/results]

For each cluster preset (datacenter, cloud, edge; ``cluster/compute=fixed`` at ``COMPUTE_S``
per step, as in ``experiments.bench.time_to_target``: these problems' own FLOPs take
nanoseconds on the presets' devices) and problem (logistic regression, digits MLP; 16 workers,
plain SGD), every algorithm of :data:`jdo.train.plan.DEFAULT_SET`:

- predicted seconds and bytes per step: :func:`jdo.train.plan.step_cost` (the clock model);
- one real run of the problem's budget of steps (``jdo.train.run``, checkpoint none, evaluated every
  ``EVERY`` steps) on that cluster. Its first ``PILOT`` steps are the pilot (a separate
  ``PILOT``-step run draws the same batches with the same seeds and a constant step size, so
  its curve is this prefix; the CLI runs it separately): the predicted time to target is the
  planner's (:func:`jdo.train.plan.fit_curve` on the prefix, or its crossing, then the clock
  model's time at that step), and the achieved
  time is the run's own clock (``time/total``) where the target was first crossed.

Reported: Spearman's rho between predicted and achieved times of the 6 (never = last, ties
averaged), and the achieved time the recommendation (rank 1) saved against all-reduce SGD.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

# problem -> (overrides, target, budget steps)
PROBLEMS = {
    "logistic": (("task=logistic", "optimizer=sgd", "optimizer.learning_rate=0.05"), 0.37, 768),
    "digits_mlp": (("task=digits", "model=mlp", "optimizer=sgd"), 0.3, 512),
}
CLUSTERS = ("datacenter", "cloud", "edge")
METRIC = "eval/avg_model/loss"
WORKERS, COMPUTE_S, PILOT, EVERY = 16, 0.01, 64, 8


def one(base, name: str, target: float, budget: int) -> dict:
    """Prediction and achievement of one algorithm (see the module docstring)."""
    from jdo.train import plan

    pilot_overrides = plan.run_overrides(base, name, PILOT, EVERY)
    lines = plan.run_metrics(plan.compose(plan.run_overrides(base, name, budget, EVERY)))
    steps, times, values = plan.curve(lines, METRIC)
    pilot = steps <= PILOT
    fit = plan.fit_curve(steps[pilot], values[pilot])
    hit = plan.first_crossing(steps[pilot], times[pilot], values[pilot], target)
    predicted_steps = hit[0] if hit else plan.steps_to_target(fit, target)
    cost = plan.step_cost(plan.compose(pilot_overrides), horizon=predicted_steps)
    achieved = plan.first_crossing(steps, times, values, target)
    at_pilot = next(x for x in lines if x["step"] == PILOT)
    return {
        "algorithm": name,
        "seconds_per_step": cost.seconds_per_step,
        "measured_seconds_per_step": at_pilot["time/total"] / PILOT,
        "bytes_per_step": cost.bytes_per_step,
        "predicted_steps": predicted_steps,
        "predicted_time": cost.time_at(predicted_steps),
        "from": "pilot" if hit else "fit",
        "fit": fit,
        "achieved_steps": achieved[0] if achieved else math.inf,
        "achieved_time": achieved[1] if achieved else math.inf,
        "final": float(values[-1]),
    }


def measure(problems, clusters) -> list[dict]:
    from jdo.train import plan

    cells = []
    for problem in problems:
        overrides, target, budget = PROBLEMS[problem]
        for cluster in clusters:
            base = (*overrides, f"workers={WORKERS}", f"cluster={cluster}")
            base += ("cluster/compute=fixed", f"cluster.compute.seconds={COMPUTE_S}")
            t0 = time.process_time()
            rows = [one(base, name, target, budget) for name in plan.DEFAULT_SET]
            rows.sort(key=lambda r: (r["predicted_time"], r["seconds_per_step"]))
            rho = plan.spearman(
                [r["predicted_time"] for r in rows], [r["achieved_time"] for r in rows]
            )
            best = rows[0]
            allreduce = next(r for r in rows if r["algorithm"] == plan.BASELINE)
            cell = {
                "problem": problem,
                "cluster": cluster,
                "target": target,
                "rho": rho,
                "recommended": best["algorithm"],
                "saved_s": allreduce["achieved_time"] - best["achieved_time"],
                "speedup": allreduce["achieved_time"] / best["achieved_time"],
                "cpu_s": time.process_time() - t0,
                "rows": rows,
            }
            cells.append(cell)
            print(
                problem, cluster, f"rho={rho:.3g}", best["algorithm"], cell["speedup"], flush=True
            )
    return cells


def _t(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:.3g}"


def report(cells: list[dict], wall_s: float, cpu_s: float) -> str:
    out = [
        "# Planner: predicted vs achieved ranking",
        "",
        "`nice -n 19 python -m experiments.bench.plan` "
        f"({WORKERS} workers, compute fixed at {COMPUTE_S} s/step, pilot = first {PILOT} steps, "
        "budget 768 steps (logistic) and 512 (digits), evaluated every "
        f"{EVERY}; metric `{METRIC}`). "
        f"Whole benchmark: {wall_s:.0f} s wall, {cpu_s:.0f} s CPU of this process.",
        "",
        "| problem | cluster | target | Spearman's rho | recommended | its achieved time (s) "
        "| all-reduce achieved (s) | saved (s) | speed-up |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        best = c["rows"][0]
        ar = next(r for r in c["rows"] if r["algorithm"] == "allreduce_sgd")
        out.append(
            f"| {c['problem']} | {c['cluster']} | {c['target']} | {c['rho']:.3g} | "
            f"{c['recommended']} | {_t(best['achieved_time'])} | {_t(ar['achieved_time'])} | "
            f"{_t(c['saved_s'])} | {_t(c['speedup'])}x |"
        )
    rhos = [c["rho"] for c in cells if not math.isnan(c["rho"])]
    held = sum(r >= 0.8 for r in rhos)
    out += ["", f"Goal rho >= 0.8: held in {held} of {len(cells)} cells.", ""]
    for c in cells:
        out += [
            f"## {c['problem']} on {c['cluster']}",
            "",
            f"| algorithm | s/step predicted | s/step measured (first {PILOT}) | bytes/step "
            "| predicted steps "
            "| predicted time (s) | achieved steps | achieved time (s) | final loss |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in c["rows"]:
            src = " (pilot)" if r["from"] == "pilot" else ""
            out.append(
                f"| {r['algorithm']} | {r['seconds_per_step']:.6g} | "
                f"{r['measured_seconds_per_step']:.6g} | {r['bytes_per_step']:.4g} | "
                f"{_t(r['predicted_steps'])}{src} | {_t(r['predicted_time'])} | "
                f"{_t(r['achieved_steps'])} | {_t(r['achieved_time'])} | {r['final']:.4f} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="experiments/bench/results")
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--clusters", default=",".join(CLUSTERS))
    a = p.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    cells = measure(a.problems.split(","), a.clusters.split(","))
    text = report(cells, time.perf_counter() - t0, time.process_time() - c0)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "plan.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "plan.json"), "w", encoding="utf-8") as f:
        json.dump(cells, f, indent=1, default=lambda x: None)
    print(text)


if __name__ == "__main__":
    main()
