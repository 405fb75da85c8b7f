"""Synchronous against asynchronous training on a simulated cluster (issue 15, benchmark 1).

    python -m experiments.bench.asynchrony [--workers 16] [--problems logistic,digits_mlp]
                                           [--out experiments/bench/results]

Every run is what a user runs: ``jdo.train.run`` on the composed Hydra config (the same as
``python -m experiments.train algorithm=... cluster=cloud cluster/compute=fixed ...``), with
its ``metrics.jsonl`` read back. Methods, all with plain SGD at one step size per problem:
all-reduce SGD, the sharded synchronous parameter server, the simulated asynchronous parameter
server in modes ``ssp`` (s = 1, 4) and ``async`` (plain, with the staleness-aware rate
lr/τ, and with DC-ASGD's delay compensation at λ = ``DC_LAMBDA``), D-PSGD on a ring and
AD-PSGD on a ring. 16 workers, on ``cluster=cloud`` without and with shifted-exponential
stragglers (c·(1 + X), X ~ Exp(mean 0.5)).

Compute: ``cluster/compute=fixed`` at ``COMPUTE_S`` per gradient (as ``time_to_target``).
``cluster=cloud``'s own compute model is ``a10``, XLA's FLOPs over an A10's peak: for these
models that is microseconds, so every method's time would be its messages' latency and a
straggler (a multiple of the compute time) would delay nothing.

A runner step is not the same unit across methods: a synchronous step is one update with all W
gradients; a step of the asynchronous parameter server is one applied version (with
stragglers, usually one gradient); a step of AD-PSGD is one wave of disjoint pairwise events.
So methods are compared on simulated time (``time/total``) and on gradients computed, never on
steps, and each runs as many steps as it needs to cover the same simulated time: the
synchronous methods ``SYNC_STEPS[problem]`` steps; the asynchronous ones the updates (waves)
their host-side schedule (:func:`jdo.asynchrony.simulate`, :func:`jdo.asynchrony.gossip_schedule`
— the one the runner replays) needs to reach all-reduce SGD's final time. Recorded per run:
simulated time and gradients at the first evaluation at the target (``eval/avg_model/loss``
≤ the target of ``time_to_target``), the test loss at the common budget (the last evaluation
at or before the earliest end among the runs), mean staleness, and wire bytes per gradient
(all workers together: ``bytes/step`` of a synchronous step per gradient; the asynchronous
server's pushes and pulls, ``bytes/wire_total``; AD-PSGD's two model messages per event).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

from experiments.bench.common import load_line, run_config, simulate_cpu_devices
from experiments.bench.time_to_target import COMPUTE_S, first_at_target, system_overrides

DC_LAMBDA = 2.0  # Zheng et al. 2017 try λ0 in 0.04-2 (CIFAR); at 0.04 g⊙g⊙Δw is ~1e-3 of g here
PS = ("algorithm=parameter_server",)
METHODS = {
    "all-reduce SGD": ("algorithm=allreduce_sgd",),
    "sync PS": (*PS, "algorithm.mode=sync"),
    "SSP s=1": (*PS, "algorithm.mode=ssp", "algorithm.staleness=1"),
    "SSP s=4": (*PS, "algorithm.mode=ssp", "algorithm.staleness=4"),
    "async": (*PS, "algorithm.mode=async"),
    "async + lr/τ": (*PS, "algorithm.mode=async", "algorithm.lr_scaling=inverse"),
    f"DC-ASGD λ={DC_LAMBDA:g}": (*PS, "algorithm.mode=async", f"algorithm.dc_lambda={DC_LAMBDA}"),
    "D-PSGD ring": ("algorithm=dpsgd", "topology=ring"),
    "AD-PSGD ring": ("algorithm=ad_psgd", "topology=ring"),
}
KIND = {m: "sync" for m in ("all-reduce SGD", "sync PS", "D-PSGD ring")} | {
    "AD-PSGD ring": "gossip"
}  # the others: "ps" (the simulated asynchronous server)
STRAGGLERS = ("none", "shifted_exponential")
METRIC = "eval/avg_model/loss"
PROBLEMS = {  # overrides, target, train samples (for epochs), synchronous steps
    "logistic": (("task=logistic", "optimizer.learning_rate=0.5"), 0.37, 1024, 128),
    "digits_mlp": (("task=digits", "model=mlp"), 0.25, 1348, 512),
}
BATCH = 32  # trainer.batch_size: samples per gradient
EVALS = 64  # evaluations per run (every steps / EVALS steps)


def kind(method: str) -> str:
    return KIND.get(method, "ps")


def system(stragglers: str) -> tuple[str, ...]:
    return system_overrides("cloud", COMPUTE_S, stragglers)


def overrides(problem: str, method: str, stragglers: str, steps: int, workers: int) -> list[str]:
    """The command line of one run (``python -m experiments.train`` + these)."""
    every = max(1, steps // EVALS)
    return [
        f"workers={workers}",
        "optimizer=sgd",
        *PROBLEMS[problem][0],
        *METHODS[method],
        *system(stragglers),
        f"trainer.steps={steps}",
        f"trainer.log_every={every}",
        f"trainer.eval_every={every}",
        "trainer.progress=false",
        "checkpoint=none",
    ]


def cluster_of(stragglers: str, workers: int):
    """The :class:`jdo.system.Cluster` the runner builds from the same overrides."""
    from hydra import compose, initialize_config_module

    from jdo.train.clocked import cluster_from_config

    with initialize_config_module("jdo.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"workers={workers}", *system(stragglers)])
    return cluster_from_config(cfg.cluster, workers)


def method_schedule(method: str, cluster, workers: int, steps: int, nbytes: float):
    """``(times, gradients, staleness)`` per step of an asynchronous method's host-side
    schedule over ``steps`` updates (waves): the time of each, the gradients applied up to it,
    and the mean staleness of those gradients."""
    import numpy as np

    from jdo import asynchrony, topology

    if kind(method) == "gossip":
        s = asynchrony.gossip_schedule(
            topology.ring(workers), cluster, num_waves=steps, message_bytes=nbytes
        )
        sizes = np.cumsum(s.wave_sizes())
        stale = np.cumsum(np.bincount(s.wave, s.staleness, s.num_waves))
        return s.wave_time(), sizes, stale / np.maximum(sizes, 1)
    mode = "ssp" if method.startswith("SSP") else "async"
    staleness = int(method.split("=")[1]) if mode == "ssp" else None
    sim = asynchrony.simulate(cluster, workers, steps, mode, staleness, None, nbytes)
    per_update = np.bincount([e.applied_version - 1 for e in sim.events], minlength=steps)
    stale = np.bincount(
        [e.applied_version - 1 for e in sim.events],
        [e.staleness for e in sim.events],
        minlength=steps,
    )
    sizes = np.cumsum(per_update)
    return sim.update_times, sizes, np.cumsum(stale) / np.maximum(sizes, 1)


def covering_schedule(method, cluster, workers: int, seconds: float, nbytes: float, steps: int):
    """:func:`method_schedule` over enough steps (doubling from ``steps``; a shorter schedule
    is a prefix of a longer one) that its last step's time reaches ``seconds``."""
    while True:
        sched = method_schedule(method, cluster, workers, steps, nbytes)
        if sched[0][-1] >= seconds:
            return sched
        steps *= 2


def params_bytes(state) -> float:
    """Bytes of one worker's parameters in a run's final state (leaves stacked over workers):
    the size of a message to or from the server, and of a gossip exchange's model."""
    import jax

    return float(
        sum(
            x.size // x.shape[0] * x.dtype.itemsize
            for x in jax.tree.leaves(getattr(state, "inner", state).params)
        )
    )


def steps_to_cover(times, seconds: float, evals: int = EVALS) -> int:
    """The fewest steps, a multiple of ``evals`` (whole evaluation intervals), whose last
    step's time reaches ``seconds`` (``times``: each step's time, increasing); the length of
    ``times`` when it never does."""
    import numpy as np

    needed = int(np.searchsorted(np.asarray(times), seconds)) + 1
    return min(evals * math.ceil(needed / evals), len(times))


def gradients_at(method: str, line: dict, workers: int, sched) -> float:
    """Gradients computed (and applied) up to a ``metrics.jsonl`` line."""
    if kind(method) == "sync":
        return line["step"] * workers
    if kind(method) == "ps":
        return line["asynchrony/gradients"]
    return float(sched[1][line["step"] - 1])


def wire_per_gradient(method: str, last: dict, workers: int, nbytes: float) -> float:
    """Bytes on the wire per gradient, all workers together."""
    if kind(method) == "sync":
        return float(last["bytes/step"])  # W workers x bytes/step per step of W gradients
    if kind(method) == "ps":
        return last["bytes/wire_total"] / max(last["asynchrony/gradients"], 1.0)
    return 2.0 * nbytes  # an AD-PSGD event: each side sends its model


def loss_at(lines: list[dict], seconds: float) -> float | None:
    """The test loss of the last evaluation at or before ``seconds`` of simulated time."""
    before = [x[METRIC] for x in lines if METRIC in x and x["time/total"] <= seconds]
    return before[-1] if before else None


def run_problem(problem: str, stragglers: str, workers: int) -> list[dict]:
    """Every method on one problem and straggler setting; all-reduce SGD first (its final
    time is what the asynchronous methods are given steps to cover)."""
    _, target, samples, sync_steps = PROBLEMS[problem]
    cluster = cluster_of(stragglers, workers)
    rows, horizon, nbytes = [], None, None
    for method in METHODS:
        sched, steps = None, sync_steps
        if kind(method) != "sync":
            sched = covering_schedule(method, cluster, workers, horizon, nbytes, sync_steps)
            steps = steps_to_cover(sched[0], horizon)
            sched = tuple(x[:steps] for x in sched)
        argv = overrides(problem, method, stragglers, steps, workers)
        summary, lines = run_config(argv)
        last = lines[-1]
        if method == "all-reduce SGD":
            horizon, nbytes = last["time/total"], params_bytes(summary["state"])
        if sched is not None:  # the runner replayed the schedule simulated here
            assert math.isclose(last["time/total"], sched[0][-1], rel_tol=1e-6), method
        hit = first_at_target(lines, METRIC, target)
        row = {
            "problem": problem,
            "stragglers": stragglers,
            "method": method,
            "command": "python -m experiments.train " + shlex.join(argv),
            "steps": steps,
            "target": target,
            "time_to_target": hit["time/total"] if hit else None,
            "gradients_to_target": gradients_at(method, hit, workers, sched) if hit else None,
            "end_time": last["time/total"],
            "end_gradients": gradients_at(method, last, workers, sched),
            "staleness_mean": (
                last["staleness/mean"]
                if kind(method) == "ps"
                else (float(sched[2][-1]) if sched is not None else 0.0)
            ),
            "wire_bytes_per_gradient": wire_per_gradient(method, last, workers, nbytes),
            "samples": samples,
            "curve": [
                (x["time/total"], gradients_at(method, x, workers, sched), x[METRIC])
                for x in lines
                if METRIC in x
            ],
        }
        rows.append(row)
        print(problem, stragglers, method, steps, row["time_to_target"], flush=True)
    budget = min(r["end_time"] for r in rows)
    for r in rows:
        r["budget"] = budget
        r["loss_at_budget"] = loss_at(
            [{"time/total": t, METRIC: v} for t, _, v in r["curve"]], budget
        )
    return rows


def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict], problem: str) -> str:
    """Markdown: one row per method; per straggler setting the time to target (s), gradients
    to target (epochs), the loss at the common budget and the mean staleness."""
    mine = [r for r in rows if r["problem"] == problem]
    settings = [s for s in STRAGGLERS if any(r["stragglers"] == s for r in mine)]
    head = ["method"]
    for s in settings:
        tag = "" if s == "none" else " (stragglers)"
        budget = next(r["budget"] for r in mine if r["stragglers"] == s)
        head += [
            f"time to target{tag} (s)",
            f"gradients to target{tag} (epochs)",
            f"loss at {budget:.3g} s{tag}",
            f"mean staleness{tag}",
        ]
    head.append("wire bytes / gradient")
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for method in METHODS:
        cells = [method]
        for s in settings:
            r = next(r for r in mine if r["method"] == method and r["stragglers"] == s)
            g = r["gradients_to_target"]
            epochs = None if g is None else g * BATCH / r["samples"]
            cells += [
                _fmt(r["time_to_target"]),
                "not reached" if g is None else f"{g:.0f} ({epochs:.3g})",
                _fmt(r["loss_at_budget"], ".4f"),
                _fmt(r["staleness_mean"], ".2f"),
            ]
        cells.append(_fmt(r["wire_bytes_per_gradient"], ".4g"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    """Test loss against simulated time (top) and against gradients (bottom), one column per
    problem and straggler setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({(r["problem"], r["stragglers"]) for r in rows}, key=lambda c: c[0])
    fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 6.6), squeeze=False)
    for j, (problem, stragglers) in enumerate(columns):
        for r in rows:
            if (r["problem"], r["stragglers"]) != (problem, stragglers):
                continue
            style = "-" if kind(r["method"]) != "ps" else "--"
            t, g, v = zip(*r["curve"], strict=True)
            axes[0][j].plot(t, v, style, label=r["method"], lw=1.2)
            axes[1][j].plot(g, v, style, label=r["method"], lw=1.2)
        tag = "no stragglers" if stragglers == "none" else "shifted-exp. stragglers"
        for i, xlabel in enumerate(("simulated time (s)", "gradients computed")):
            ax = axes[i][j]
            ax.axhline(PROBLEMS[problem][1], color="grey", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{problem}, {tag}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test loss (averaged model)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--stragglers", default=",".join(STRAGGLERS))
    parser.add_argument("--out", default="experiments/bench/results")
    parser.add_argument(
        "--merge", nargs="*", default=None, help="only tabulate and plot these saved JSONs"
    )
    args = parser.parse_args()
    if args.merge is not None:  # several partial runs (e.g. one per problem) as one result
        saved = [json.load(open(path, encoding="utf-8")) for path in args.merge]
        commands = [x["command"] for x in saved]
        header = "; ".join(x["machine"] for x in saved)
        rows = [r for x in saved for r in x["rows"]]
    else:
        simulate_cpu_devices()
        header = load_line()
        rows = []
        for problem in args.problems.split(","):
            for stragglers in args.stragglers.split(","):
                rows += run_problem(problem, stragglers, args.workers)
        commands = ["python -m experiments.bench.asynchrony " + shlex.join(sys.argv[1:])]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "asynchrony.json"), "w", encoding="utf-8") as f:
        json.dump({"command": " && ".join(commands), "machine": header, "rows": rows}, f)
    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in rows)]
    text = "\n\n".join(f"### {p}\n\n{table(rows, p)}" for p in problems)
    with open(os.path.join(args.out, "asynchrony.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(f"`{c}`" for c in commands) + f"\n\n({header})\n\n{text}\n")
    plot(rows, os.path.join(args.out, "asynchrony.png"))
    print(text)


if __name__ == "__main__":
    main()
