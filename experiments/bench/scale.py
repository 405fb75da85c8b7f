"""Step time and memory against the number of simulated workers (issue 16).

    nice -n 19 python -m experiments.bench.scale

**Scale** (``--part scale``): W ∈ {8, 64, 256, 1024, 4096} workers on one CPU device, the
runner's compiled chunk of K steps (built as :func:`jdo.train.loop.fit` builds it; see
:class:`experiments.bench.worker_map.Chunk`), for two models — logistic regression (the
linear model on ``task=logistic``, 16 features) and the digits MLP's architecture (64 → 128 →
128 → output, on ``task=logistic`` with 64 features: digits has only 1,348 training images,
too few for 4,096 workers) — under all-reduce SGD and D-PSGD on a ring, SGD, batch 32 per
worker, 8 samples per worker; lifted by plain ``vmap`` and by ``vmap`` with
``lifting.chunk=256`` (the per-worker gradients 256 workers at a time), by the hybrid lifting on
the 8 simulated devices (W/8 workers per device; ``--no-hybrid`` leaves it out) and, at W = 8,
by ``shard_map`` (one worker per device). The 8 devices share this machine's cores, so the
hybrid rows show what the lifting's own collectives cost, not a speed-up. Reported: ms per step,
µs per worker-step, and the compiled program's memory (``memory_analysis``: arguments +
temporaries, the XLA estimate of the peak, per device for the hybrid rows; the state itself
is W × params).

**Sampled FedAvg** (``--part fedavg``): 1,024 clients of the MLP, 10 % sampled per round of
4 local steps: the cohort computed alone (``Algorithm.cohort``: gather, step, scatter) against
the same rounds with every client computing and the non-sampled ones masked out (the
lifting without the cohort), and against full participation; ms per step and the compiled
chunk's FLOPs (``cost_analysis``). Interleaved rounds; the hybrid lifting's rows are added by
its own benchmark. Writes ``experiments/bench/results/scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments.bench.common import (
    interleaved_times,
    load_line,
    min_of_medians,
    simulate_cpu_devices,
)
from experiments.bench.worker_map import Chunk, compose

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "bench", "results", "scale")
WORKERS = (8, 64, 256, 1024, 4096)
MODELS = {
    "logistic": ("task=logistic", "task.data.dim=16"),
    "mlp": ("task=logistic", "task.data.dim=64", "model=mlp", "model.hidden=[128,128]"),
}
ALGORITHMS = {"allreduce_sgd": ("algorithm=allreduce_sgd",), "dpsgd ring": ("algorithm=dpsgd",)}
COMMON = ("optimizer=sgd", "optimizer.learning_rate=0.05", "trainer.batch_size=32")
CHUNK = 256
DEVICES = 8  # the simulated CPU devices of the hybrid and shard_map rows
HYBRID = ("lifting=hybrid", f"lifting.devices={DEVICES}")


def _cfg(model: str, workers: int, *extra: str):
    data = (f"task.data.num_samples={8 * workers}",)
    return compose(*MODELS[model], *data, *COMMON, f"workers={workers}", *extra)


def _memory_mb(compiled) -> float:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.temp_size_in_bytes) / 1e6


def scale_rows(
    workers, k: int, rounds: int, models=tuple(MODELS), hybrid: bool = True
) -> list[dict]:
    rows = []
    for model in models:
        for algorithm, algo_overrides in ALGORITHMS.items():
            for w in workers:
                variants = {"vmap": ()}
                if w > CHUNK:
                    variants[f"vmap chunk={CHUNK}"] = (f"lifting.chunk={CHUNK}",)
                if hybrid:
                    variants[f"hybrid on {DEVICES} devices"] = HYBRID
                if hybrid and w == DEVICES:
                    variants[f"shard_map on {DEVICES} devices"] = ("lifting=shard_map",)
                chunks = {
                    name: Chunk(_cfg(model, w, *algo_overrides, *extra), k)
                    for name, extra in variants.items()
                }
                times = interleaved_times(chunks, rounds=rounds, calls=1)
                for name, chunk in chunks.items():
                    ms = 1e3 * min_of_medians(times[name]) / k
                    row = {
                        "model": model,
                        "algorithm": algorithm,
                        "workers": w,
                        "lifting": name,
                        "ms_per_step": ms,
                        "us_per_worker_step": 1e3 * ms / w,
                        "memory_mb": _memory_mb(chunk.fn),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del chunks
    return rows


def fedavg_rows(workers: int, k: int, rounds: int) -> list[dict]:
    fedavg = ("algorithm=fedavg", "algorithm.local_steps=4")
    variants = {
        "10% sampled, cohort only": (("algorithm.participation=0.1",), True),
        "10% sampled, all compute (masked)": (("algorithm.participation=0.1",), False),
        "full participation": (("algorithm.participation=1.0",), True),
    }
    chunks = {
        name: Chunk(_cfg("mlp", workers, *fedavg, *extra), k, cohort=cohort)
        for name, (extra, cohort) in variants.items()
    }
    times = interleaved_times(chunks, rounds=rounds, calls=1)
    rows = []
    for name, chunk in chunks.items():
        row = {
            "workers": workers,
            "variant": name,
            "ms_per_step": 1e3 * min_of_medians(times[name]) / k,
            "gflops_per_chunk": chunk.fn.cost_analysis()["flops"] / 1e9,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def tables(scale: list[dict], fedavg: list[dict]) -> str:
    out = []
    if scale:
        out += [
            "| model | algorithm | W | lifting | ms/step | µs/worker-step | memory MB |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: |",
        ]
        out += [
            f"| {r['model']} | {r['algorithm']} | {r['workers']} | {r['lifting']} | "
            f"{r['ms_per_step']:.2f} | {r['us_per_worker_step']:.1f} | {r['memory_mb']:.0f} |"
            for r in scale
        ]
        out.append("")
    if fedavg:
        out += [
            "| FedAvg, W clients | variant | ms/step | GFLOP per chunk |",
            "| ---: | --- | ---: | ---: |",
        ]
        out += [
            f"| {r['workers']} | {r['variant']} | {r['ms_per_step']:.2f} | "
            f"{r['gflops_per_chunk']:.2f} |"
            for r in fedavg
        ]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("scale", "fedavg", "all"), default="all")
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--fedavg-workers", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4, help="steps per chunk call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--no-hybrid", action="store_true", help="leave the hybrid rows out")
    args = parser.parse_args(argv)
    simulate_cpu_devices(8)
    import jax

    header = f"{jax.default_backend()}, jax {jax.__version__}; {load_line()} (at the start)"
    scale = (
        scale_rows(args.workers, args.k, args.rounds, args.models, not args.no_hybrid)
        if args.part != "fedavg"
        else []
    )
    fedavg = (
        fedavg_rows(args.fedavg_workers, 2 * args.k, args.rounds) if args.part != "scale" else []
    )
    text = (
        f"# Step time and memory vs simulated workers (vmap on one CPU device; hybrid on "
        f"{DEVICES} simulated ones; K={args.k} steps per "
        f"call, {args.rounds} interleaved rounds)\n\n{header}; at the end: {load_line()}\n\n"
        f"{tables(scale, fedavg)}"
    )
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"header": header, "scale": scale, "fedavg": fedavg}, f, indent=2)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
