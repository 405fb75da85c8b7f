"""Adaptive methods (issue 18): AdaComm against local SGD with fixed periods, Accordion against
its two fixed compressors.

    nice -n 19 python -m experiments.bench.adaptive [--workers 16] [--out experiments/bench/results]

Every run is what a user runs: ``jdo.train.run`` on the composed Hydra config (the same as
``python -m experiments.train algorithm=adacomm ... cluster=cloud``), its ``metrics.jsonl`` read
back. Both parts use plain SGD, 16 workers, ``cluster=cloud`` with ``cluster/compute=fixed`` at
``COMPUTE_S`` per step (a step whose compute does not hide the all-reduce: what local SGD and
compression are for; the problems' own FLOPs take microseconds on the preset's devices), the
problems, step sizes and targets of ``experiments.bench.time_to_target`` (the averaged model's
test loss, checked every ``EVERY`` steps).

1. AdaComm (``every=64, min_every=1, max_every=64``: it starts at the longest period and
   shortens as the loss falls) against ``local_sgd`` with H in {1, 4, 16, 64}: simulated
   seconds (``time/total``, the latest worker's clock) and steps to the target.
2. Accordion (``low`` = top-k 10 %, ``high`` = top-k 1 %, EF, ``interval=EVERY``, eta 0.5)
   against ``compressed_sgd`` with each compressor fixed, on the digits MLP: wire bytes per
   worker to the target (``bytes/total``: per step, the branch taken) and the final accuracy.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments.bench.common import simulate_cpu_devices
from experiments.bench.time_to_target import (
    DIGITS_TARGET,
    LOGISTIC_TARGET,
    first_at_target,
    run_one,
    system_overrides,
)

COMPUTE_S = 0.001
EVERY = 16
PROBLEMS = {
    "logistic": (("task=logistic", "optimizer.learning_rate=0.5"), LOGISTIC_TARGET, 512),
    "digits_mlp": (("task=digits", "model=mlp"), DIGITS_TARGET, 768),
}
PERIODS = {
    **{f"local SGD H={h}": ("algorithm=local_sgd", f"algorithm.every={h}") for h in (1, 4, 16, 64)},
    "AdaComm H0=64": (
        "algorithm=adacomm",
        "algorithm.every=64",
        "algorithm.min_every=1",
        "algorithm.max_every=64",
    ),
}
FIXED = ("algorithm=compressed_sgd", "compression=top_k")
COMPRESSION = {
    "fixed low (top-k 10%)": (*FIXED, "compression.ratio=0.1"),
    "fixed high (top-k 1%)": (*FIXED, "compression.ratio=0.01"),
    "Accordion 10%/1%": ("algorithm=accordion", f"algorithm.interval={EVERY}"),
}
SYSTEM = system_overrides("cloud", COMPUTE_S)  # the preset's stragglers: none


def row(problem, method, lines, target) -> dict:
    hit = first_at_target(lines, "eval/avg_model/loss", target)
    last = lines[-1]
    periods = [x["train/adaptive/H"] for x in lines if "train/adaptive/H" in x]
    levels = [x["train/adaptive/level"] for x in lines if "train/adaptive/level" in x]
    return {
        "problem": problem,
        "method": method,
        "steps": hit["step"] if hit else None,
        "time_s": hit["time/total"] if hit else None,
        "bytes_to_target": hit["bytes/total"] if hit else None,
        "final_accuracy": last.get("eval/avg_model/accuracy"),
        "final_loss": last.get("eval/avg_model/loss"),
        "bytes_total": last["bytes/total"],
        "periods": periods,
        "levels": levels,
    }


def measure(workers: int, problems) -> list[dict]:
    rows = []
    for problem in problems:
        base, target, steps = PROBLEMS[problem]
        for method, overrides in PERIODS.items():
            lines = run_one((*SYSTEM, *base, *overrides), steps, workers, EVERY)
            rows.append(row(problem, method, lines, target))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "levels"}), flush=True)
    base, target, steps = PROBLEMS["digits_mlp"]
    for method, overrides in COMPRESSION.items():
        lines = run_one((*SYSTEM, *base, *overrides), steps, workers, EVERY)
        rows.append(row("digits_mlp (compression)", method, lines, target))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "periods"}), flush=True)
    return rows


def _fmt(x, spec=".3g"):
    return "not reached" if x is None else format(x, spec)


def tables(rows: list[dict]) -> str:
    out = []
    for problem in sorted({r["problem"] for r in rows if "compression" not in r["problem"]}):
        mine = [r for r in rows if r["problem"] == problem]
        out += [f"### AdaComm vs local SGD: {problem}, cluster=cloud", ""]
        out += ["| method | steps to target | simulated s to target | period (first → least) |"]
        out += ["|---|---|---|---|"]
        for r in mine:
            used = r["periods"]  # per logging interval: the mean period of its steps
            shown = f"{used[0]:g} → {min(used):g} (last {used[-1]:g})" if used else "—"
            steps, time_s = _fmt(r["steps"], "d"), _fmt(r["time_s"])
            out.append(f"| {r['method']} | {steps} | {time_s} | {shown} |")
        out.append("")
    mine = [r for r in rows if "compression" in r["problem"]]
    if mine:
        out += ["### Accordion vs fixed compression: digits MLP, cluster=cloud", ""]
        out += [
            "| method | steps to target | bytes to target | bytes total | final accuracy |",
            "|---|---|---|---|---|",
        ]
        for r in mine:
            out.append(
                f"| {r['method']} | {_fmt(r['steps'], 'd')} | {_fmt(r['bytes_to_target'], ',')} | "
                f"{r['bytes_total']:,} | {_fmt(r['final_accuracy'], '.4f')} |"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--out", default="experiments/bench/results")
    parser.add_argument("--tables-only", action="store_true", help="redo the tables from JSON")
    args = parser.parse_args()
    if args.tables_only:
        with open(os.path.join(args.out, "adaptive.json"), encoding="utf-8") as f:
            rows = json.load(f)
    else:
        simulate_cpu_devices()
        rows = measure(args.workers, args.problems.split(","))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "adaptive.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f)
    text = tables(rows)
    with open(os.path.join(args.out, "adaptive.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
