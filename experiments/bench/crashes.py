"""Crashes during training: 2 of 16 workers go down at 30 % of the run, one rejoins at 60 %.

    python -m experiments.bench.crashes [--steps 800] [--out experiments/bench/results]

All-reduce SGD (plain SGD, step 0.1, batch 32 per worker) on the MLP on digits, built from the
default config (``jdo.train.build``) and trained by the runner's ``jdo.train.fit`` — the Python
way in, because two crashes with different rejoin steps are ``jdo.faults.combine(node_crash([0],
a, b), node_crash([1], a))``, which one ``faults=node_crash`` config node cannot express. Three
runs on the same data: 16 workers without faults, the same 16 with the crashes (a down worker
neither sends nor updates; the other workers average what reaches them; the rejoining worker
lands on the survivors' average), and 14 workers without faults. Reported: the averaged
model's test loss and the mean worker accuracy at every evaluation (a curve) and at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

from experiments.bench.common import simulate_cpu_devices

EVERY = 16


def _run(workers: int, steps: int, faults=None) -> list[dict]:
    import optax
    from hydra import compose, initialize_config_module

    from jdo import algorithms
    from jdo.train import build, fit

    overrides = [f"workers={workers}", "optimizer=sgd", "trainer.progress=false"]
    with initialize_config_module("jdo.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    exp = build(cfg)
    algo = algorithms.allreduce_sgd(exp.loss_fn, optax.sgd(0.1), faults=faults)
    exp = dataclasses.replace(exp, algorithm=algo)
    with tempfile.TemporaryDirectory() as out:
        fit(
            exp,
            workers=workers,
            steps=steps,
            batch_size=32,
            log_every=EVERY,
            eval_every=EVERY,
            output_dir=out,
            progress=False,
        )
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default="experiments/bench/results")
    args = parser.parse_args()
    simulate_cpu_devices(16)
    from jdo import faults

    down, back = int(0.3 * args.steps), int(0.6 * args.steps)
    crashes = faults.combine(faults.node_crash([0], down, back), faults.node_crash([1], down))
    runs = {
        "16 workers, no faults": _run(16, args.steps),
        f"16 workers, 2 down at {down}, 1 back at {back}": _run(16, args.steps, crashes),
        "14 workers, no faults": _run(14, args.steps),
    }
    rows = [
        "| run | test loss (averaged model) at the end | mean worker accuracy at the end |",
        "|---|---:|---:|",
    ]
    for name, lines in runs.items():
        last = lines[-1]
        rows.append(
            f"| {name} | {last['eval/avg_model/loss']:.4f} | "
            f"{last['eval/workers/accuracy_mean']:.4f} |"
        )
    text = "\n".join(rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "crashes.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    _plot(runs, down, back, os.path.join(args.out, "crashes.png"))
    print(text)


def _plot(runs, down, back, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, lines in runs.items():
        ax.plot([x["step"] for x in lines], [x["eval/avg_model/loss"] for x in lines], label=name)
    for step in (down, back):
        ax.axvline(step, color="grey", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="step", ylabel="test loss of the averaged model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
