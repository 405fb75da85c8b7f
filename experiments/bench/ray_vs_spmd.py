"""A real asynchronous parameter server (``backend=ray``) against the SPMD runner's synchronous
all-reduce SGD, on this machine: updates per second, time to target, measured staleness.

    nice -n 19 python -m experiments.bench.ray_vs_spmd [--workers 2 4] [--repeats 2]
        [--out experiments/bench/results]

Every run is what a user runs: ``jdo.train.run`` of the composed config, i.e.
``python -m experiments.train backend=ray algorithm=parameter_server parameter_server.mode=async
workers=W task=logistic optimizer=sgd optimizer.learning_rate=0.5`` against
``python -m experiments.train algorithm=allreduce_sgd workers=W ...`` (vmap lifting, one
process). Problem and target: those of ``experiments.bench.time_to_target`` (l2-regularised
logistic regression, 32 rows a gradient, the averaged model's test loss ≤ 0.37), evaluated every
``EVERY`` updates. One update is one server version: an asynchronous update applies ONE worker's
gradient, a synchronous step the average of W (so ``gradients/s`` = W × steps/s for the SPMD run).

Times: Ray's ``time/wall`` is the server's clock from the moment every worker process is up and
compiled (start-up is reported apart as ``startup_s``); the SPMD time to target is the target's
step over the run's ``steps_per_s`` (its ``train_s`` excludes compile and evaluation). The
simulated-staleness column (``jdo.asynchrony.schedule`` on ``cluster=measured``) needs the
asynchrony package, which is not on this branch: it is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.bench.common import run_config

TARGET = 0.37  # eval/avg_model/loss, as in experiments.bench.time_to_target
METRIC = "eval/avg_model/loss"
EVERY = 10
PROBLEM = ("task=logistic", "optimizer=sgd", "optimizer.learning_rate=0.5")
RAY_STEPS = 600
SPMD_STEPS = 300


def _common(steps: int, workers: int) -> tuple[str, ...]:
    return (
        *PROBLEM,
        f"workers={workers}",
        f"trainer.steps={steps}",
        f"trainer.log_every={EVERY}",
        f"trainer.eval_every={EVERY}",
        "trainer.progress=false",
        "checkpoint=none",
    )


def first_at_target(lines: list[dict]) -> dict | None:
    return next((x for x in lines if x.get(METRIC, np.inf) <= TARGET), None)


def ray_row(workers: int) -> dict:
    summary, lines = run_config(
        (
            *_common(RAY_STEPS, workers),
            "backend=ray",
            "algorithm=parameter_server",
            "parameter_server.mode=async",
        )
    )
    hit = first_at_target(lines)
    hist = np.asarray(summary["staleness/histogram"], np.float64)
    return {
        "method": f"ray async PS, {workers} worker processes",
        "workers": workers,
        "updates_per_s": summary["updates_per_s"],
        "gradients_per_s": summary["updates_per_s"],
        "updates_to_target": hit["step"] if hit else None,
        "time_to_target_s": hit["time/wall"] if hit else None,
        "final_loss": lines[-1][METRIC],
        "staleness_mean": summary["staleness/mean"],
        "staleness_hist": (hist / hist.sum()).round(4).tolist(),
        "startup_s": summary["startup_s"],
    }


def spmd_row(workers: int) -> dict:
    summary, lines = run_config(("algorithm=allreduce_sgd", *_common(SPMD_STEPS, workers)))
    hit = first_at_target(lines)
    rate = summary["steps_per_s"]
    return {
        "method": f"SPMD all-reduce SGD, {workers} workers (vmap)",
        "workers": workers,
        "updates_per_s": rate,
        "gradients_per_s": rate * workers,
        "updates_to_target": hit["step"] if hit else None,
        "time_to_target_s": hit["step"] / rate if hit else None,
        "final_loss": lines[-1][METRIC],
        "staleness_mean": 0.0,
        "staleness_hist": [1.0],
        "startup_s": summary["compile_s"],
    }


def _fmt(x, digits=3):
    if x is None:
        return "not reached"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def table(rows: list[dict]) -> str:
    """Markdown: the median over repeats of each method's numbers (the staleness histogram:
    their mean)."""
    head = (
        "| method | updates/s | gradients/s | updates to target | time to target (s) | "
        "final test loss | mean staleness | staleness histogram (τ = 0, 1, ...) | start-up (s) |"
    )
    out = [head, "|---" * 9 + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]

        def med(key, mine=mine):
            values = [r[key] for r in mine if r[key] is not None]
            return float(np.median(values)) if values else None

        width = max(len(r["staleness_hist"]) for r in mine)
        hist = np.mean(
            [np.pad(r["staleness_hist"], (0, width - len(r["staleness_hist"]))) for r in mine], 0
        )
        out.append(
            f"| {method} | {_fmt(med('updates_per_s'))} | {_fmt(med('gradients_per_s'))} | "
            f"{_fmt(med('updates_to_target'))} | {_fmt(med('time_to_target_s'))} | "
            f"{_fmt(med('final_loss'), 4)} | {_fmt(med('staleness_mean'))} | "
            f"{', '.join(f'{h:.2f}' for h in hist[:8])}{' ...' if len(hist) > 8 else ''} | "
            f"{_fmt(med('startup_s'))} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("experiments", "bench", "results"))
    parser.add_argument("--table", action="store_true", help="only redo the table from the JSON")
    args = parser.parse_args()
    if args.table:
        with open(os.path.join(args.out, "ray_vs_spmd.json"), encoding="utf-8") as f:
            saved = json.load(f)
        write_table(saved["rows"], saved["load_1min"], saved["date"], args.out)
        return
    from jdo.train.ray_run import import_ray, init_ray

    started = init_ray(None, num_cpus=max(args.workers) + 1)  # one instance for every Ray run
    rows, load = [], [os.getloadavg()[0]]
    try:
        for _ in range(args.repeats):  # interleaved: the machine's load drifts
            for workers in args.workers:
                for row in (spmd_row, ray_row):
                    rows.append(row(workers))
                    load.append(os.getloadavg()[0])
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        if started:
            import_ray().shutdown()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ray_vs_spmd.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "load_1min": load, "date": time.ctime()}, f, indent=1)
    write_table(rows, load, time.ctime(), args.out)


def write_table(rows: list[dict], load: list[float], date: str, out: str) -> None:
    repeats = len(rows) // len({r["method"] for r in rows})
    text = table(rows) + (
        f"\n\n{len(rows)} runs, {repeats} repeat(s) interleaved, medians; 1-minute load "
        f"average during the runs: {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores "
        f"({date}).\n"
    )
    with open(os.path.join(out, "ray_vs_spmd.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
