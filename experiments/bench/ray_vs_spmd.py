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
step over the run's ``steps_per_s`` (its ``train_s`` excludes compile and evaluation).

Predicted staleness (:func:`predicted`): ``jdo.asynchrony.schedule(mode="async")`` over the
same number of updates on ``cluster=measured`` with one worker per node (each Ray worker is its
own process: a push or pull costs the measured inter-process link's alpha + bytes/B), messages
of the model's bytes, and as each worker's compute the time the Ray run itself took per
gradient besides its push and pull: ``W / updates_per_s - 2 (alpha + bytes/B)`` (the measured
compute model would time a d = 16 gradient, microseconds, where a Ray worker's cycle is
milliseconds of actor calls and pickling). Equal compute times arrive at the same instant and
the simulator applies them together (synchronous SGD, staleness 0), so the prediction adds the
machine's scheduling jitter as lognormal compute noise (sigma ``JITTER``, mean unchanged);
the prediction with no jitter is reported beside it.
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
JITTER = 0.1  # lognormal sigma of the simulated per-gradient time (the mean does not depend on it)
WITHIN = 0.3  # the bar: predicted mean staleness within 30% of the measured one


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


def predicted(workers: int, updates_per_s: float, jitter: float = JITTER) -> dict:
    """The simulator's async schedule of this Ray run (see the module docstring): mean
    staleness and histogram over ``RAY_STEPS`` updates."""
    import dataclasses

    import jax
    from hydra import compose, initialize_config_module

    from jdo import asynchrony, system
    from jdo.train.builder import build_problem
    from jdo.train.clocked import cluster_from_config

    node = [f"workers={workers}", "cluster=measured", "cluster.workers_per_node=1", *PROBLEM]
    with initialize_config_module("jdo.conf", version_base="1.3"):
        cfg = compose("config", overrides=node)
    params = build_problem(cfg).params
    nbytes = float(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))
    cluster = cluster_from_config(cfg.cluster, workers)
    seconds = workers / updates_per_s - 2 * cluster.inter.time(nbytes)
    noise = system.lognormal(jitter) if jitter else None
    cluster = dataclasses.replace(cluster, compute=system.fixed(seconds), stragglers=noise)
    events = asynchrony.schedule(cluster, workers, RAY_STEPS, "async", message_bytes=nbytes)
    tau = np.array([e.staleness for e in events])
    return {
        "workers": workers,
        "compute_s": seconds,
        "jitter": jitter,
        "staleness_mean": float(tau.mean()),
        "staleness_hist": (np.bincount(tau) / len(tau)).round(4).tolist(),
    }


def prediction_table(rows: list[dict]) -> str:
    """Markdown: per Ray configuration, the measured mean staleness (median over repeats) and
    histogram (mean) against the simulator's, with and without jitter."""
    out = [
        "| workers | measured mean τ | predicted mean τ (jitter σ = "
        f"{JITTER:g}) | within {WITHIN:.0%} | predicted, no jitter | simulated compute / gradient "
        "(ms) | measured histogram (τ = 0, 1, ...) | predicted histogram |",
        "|---" * 8 + "|",
    ]
    for workers in sorted({r["workers"] for r in rows if r["method"].startswith("ray")}):
        mine = [r for r in rows if r["method"].startswith("ray") and r["workers"] == workers]
        rate = float(np.median([r["updates_per_s"] for r in mine]))
        measured = float(np.median([r["staleness_mean"] for r in mine]))
        width = max(len(r["staleness_hist"]) for r in mine)
        hist = np.mean(
            [np.pad(r["staleness_hist"], (0, width - len(r["staleness_hist"]))) for r in mine], 0
        )
        sim, flat = predicted(workers, rate), predicted(workers, rate, 0.0)
        close = abs(sim["staleness_mean"] - measured) <= WITHIN * measured
        out.append(
            f"| {workers} | {measured:.3g} | {sim['staleness_mean']:.3g} | "
            f"{'yes' if close else 'no'} ({sim['staleness_mean'] / measured - 1:+.1%}) | "
            f"{flat['staleness_mean']:.3g} | {sim['compute_s'] * 1e3:.3g} | "
            f"{', '.join(f'{h:.2f}' for h in hist[:8])} | "
            f"{', '.join(f'{h:.2f}' for h in sim['staleness_hist'][:8])} |"
        )
    return "\n".join(out)


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
    text = (
        f"{table(rows)}\n\n{len(rows)} runs, {repeats} repeat(s) interleaved, medians; 1-minute "
        f"load average during the runs: {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} "
        f"cores ({date}).\n\nStaleness predicted by the simulator (jdo.asynchrony.schedule, "
        f"async, cluster=measured, the Ray run's own time per gradient):\n\n"
        f"{prediction_table(rows)}\n"
    )
    with open(os.path.join(out, "ray_vs_spmd.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
