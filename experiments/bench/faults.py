"""Faults inside a run: unreliable links and backup workers, through the runner.

    python -m experiments.bench.faults [--out experiments/bench/results]

Every row is one run of what a user runs (``jdo.train.run`` on the composed config, as
``python -m experiments.train ...``), 16 workers, plain SGD, read back from ``metrics.jsonl``.

1. Unreliable links (issue 14, benchmark 1): ``faults=link_drop faults.p=p`` for
   p ∈ {0, 0.1, 0.3, 0.5}, all-reduce SGD (each worker averages the gradients that reached it)
   and D-PSGD on a ring and on the exponential graph (mixing over the delivered links), on
   logistic regression and the MLP on digits: the final test loss of the averaged model (mean of
   the last three evaluations) and the steps to the target of ``time_to_target``. Goal
   (Yu et al. 2019): p = 0.1 within 1 % of the fault-free final loss.
2. Backup workers (benchmark 3): ``trainer.backup_workers=b`` for b ∈ {0, 1, 2, 4} on
   ``cluster=cloud`` with ``shifted_exponential`` stragglers and 10 ms of compute per step (as in
   ``time_to_target``): simulated time to the MLP's target. Goal (Chen et al. 2016): b = 2 beats
   b = 0.
"""

from __future__ import annotations

import argparse
import os

from experiments.bench.common import simulate_cpu_devices
from experiments.bench.time_to_target import (
    COMPUTE_S,
    EVERY,
    PROBLEMS,
    first_at_target,
    run_one,
    system_overrides,
    target_of,
)

DROPS = (0.0, 0.1, 0.3, 0.5)
GRAPHS = {
    "all-reduce SGD": ("algorithm=allreduce_sgd",),
    "D-PSGD ring": ("algorithm=dpsgd", "topology=ring"),
    "D-PSGD exponential": ("algorithm=dpsgd", "topology=exponential"),
}
BACKUPS = (0, 1, 2, 4)


def link_drop_rows(workers: int) -> list[str]:
    rows = [
        "| problem | method | " + " | ".join(f"p = {p}: final loss, steps" for p in DROPS) + " |",
        "|---|---|" + "---:|" * len(DROPS),
    ]
    for problem, (base, metric, steps) in PROBLEMS.items():
        for method, overrides in GRAPHS.items():
            cells, clean = [], None
            for p in DROPS:
                faults = ("faults=link_drop", f"faults.p={p}") if p else ()
                lines = run_one((*base, *overrides, *faults), steps, workers)
                final = sum(x[metric] for x in lines[-3:]) / 3
                clean = final if p == 0 else clean
                hit = first_at_target(lines, metric, target_of(problem))
                change = "" if p == 0 else f" ({100 * (final / clean - 1):+.1f} %)"
                cells.append(f"{final:.4f}{change}, {hit['step'] if hit else '—'}")
                print(problem, method, p, cells[-1], flush=True)
            rows.append(f"| {problem} | {method} | " + " | ".join(cells) + " |")
    return rows


def backup_rows(workers: int) -> list[str]:
    base, metric, steps = PROBLEMS["digits_mlp"]
    system = system_overrides("cloud", COMPUTE_S, "shifted_exponential")
    rows = [
        "| backup workers b | steps to target | simulated time to target (s) | × b = 0 |",
        "|---:|---:|---:|---:|",
    ]
    first = None
    for b in BACKUPS:
        lines = run_one((*base, *system, f"trainer.backup_workers={b}"), steps, workers)
        hit = first_at_target(lines, metric, target_of("digits_mlp"))
        t = hit["time/total"] if hit else None
        first = t if b == 0 else first
        ratio = f"{t / first:.2f}" if t and first else "—"
        rows.append(f"| {b} | {hit['step'] if hit else '—'} | {t:.3g} | {ratio} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--out", default="experiments/bench/results")
    args = parser.parse_args()
    simulate_cpu_devices()
    text = "\n".join(
        [
            f"**Unreliable links** (16 workers; final = mean of the last three evaluations, every "
            f"{EVERY} steps; steps = first evaluation at the target)",
            "",
            *link_drop_rows(args.workers),
            "",
            "**Backup workers** (MLP on digits, cluster=cloud, shifted-exponential stragglers)",
            "",
            *backup_rows(args.workers),
        ]
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "faults.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
