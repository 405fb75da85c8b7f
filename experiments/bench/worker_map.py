"""Vmap against a sequential map of the per-worker compute, per model (issue 16).

    nice -n 19 python -m experiments.bench.worker_map --rounds 5

For each model (the linear model on ``task=logistic``, the MLP and the CNN on digits, the CNN
once with its default matmul convolutions and once with ``model.conv=xla``; 8
workers, all-reduce SGD, batch 32 per worker) the runner's compiled chunk of K steps, built
the way :func:`jdo.train.loop.fit` builds it (composed config, ``build``, the non-finite guard,
``make_program``, ``program.init``, ``compile_program``), is timed under each
``lifting.map`` / ``lifting.chunk``: ``vmap`` (all workers at once), ``scan`` (one at a time),
``chunk=4`` and ``auto``, with an A/A row (a second, separately compiled ``vmap``) in the same
interleaved rounds. Reported: milliseconds per step (minimum over rounds of the per-round
median of the chunk calls, divided by K) and the ratio to ``vmap``. Writes
``experiments/bench/results/worker_map.json`` and ``.md`` (``--out``).
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "bench", "results", "worker_map")
MODELS = {
    "linear (logistic)": ("task=logistic",),
    "mlp (digits)": ("model=mlp",),
    "cnn (digits)": ("model=cnn",),  # conv=auto: one matmul per convolution on CPU
    "cnn (digits), conv=xla": ("model=cnn", "model.conv=xla"),
}
VARIANTS = {
    "vmap": (),
    "vmap (A/A)": (),
    "scan": ("lifting.map=scan",),
    "chunk=4": ("lifting.chunk=4",),
    "auto": ("lifting.map=auto",),
}


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("jdo.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


class Chunk:
    """The runner's compiled chunk (``fn``: a ``jax.stages.Compiled``, so its
    ``memory_analysis`` and ``cost_analysis`` can be read) with its (donated) state: each
    call runs K steps. ``cohort=False``: an algorithm's sampled cohort is ignored (every
    worker computes)."""

    def __init__(self, cfg, k: int, cohort: bool = True):
        import jax

        from jdo.train.builder import build
        from jdo.train.guard import guard_nonfinite
        from jdo.train.mesh import lifting_of
        from jdo.train.program import compile_program, make_program, place

        exp, trainer, lifting = build(cfg), cfg.trainer, lifting_of(cfg.lifting)
        algo = guard_nonfinite(exp.algorithm, trainer.nonfinite)
        if not cohort:  # sampled participation computed for every worker, masked
            algo = algo._replace(cohort=None)
        program = make_program(
            exp,
            algo,
            workers=cfg.workers,
            lifting=lifting.name,
            devices=lifting.devices,
            batch_size=trainer.batch_size,
            length=k,
            check_state=trainer.nonfinite == "stop",
            chunk=lifting.chunk,
            map=lifting.map,
            nodes=lifting.nodes,
        )
        self.data = place(tuple(exp.data), program.per_worker)
        init_key, self.key = jax.random.split(jax.random.key(cfg.seed))
        keys = jax.random.split(init_key, cfg.workers)
        self.state = program.init(exp.params, keys)
        program = compile_program(
            program,
            exp,
            algo,
            self.state,
            self.data,
            self.key,
            workers=cfg.workers,
            batch_size=trainer.batch_size,
            eval_batch_size=trainer.eval_batch_size,
        )
        self.fn, self.k, self.step = program.chunk, k, 0

    def __call__(self):
        import jax.numpy as jnp

        out = self.fn(self.state, self.data, self.key, jnp.int32(self.step), jnp.int32(self.k))
        self.state, self.step = out[0], self.step + self.k
        return out


def measure(workers: int, k: int, rounds: int, calls: int) -> list[dict]:
    rows = []
    for model, model_overrides in MODELS.items():
        chunks = {
            name: Chunk(compose(*model_overrides, f"workers={workers}", *extra), k)
            for name, extra in VARIANTS.items()
        }
        times = interleaved_times(chunks, rounds=rounds, calls=calls)
        ms = {name: 1e3 * min_of_medians(t) / k for name, t in times.items()}
        for name in VARIANTS:
            rows.append(
                {
                    "model": model,
                    "map": name,
                    "workers": workers,
                    "ms_per_step": ms[name],
                    "ratio_to_vmap": ms[name] / ms["vmap"],
                }
            )
        print(f"{model}: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ms.items()), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | map | ms/step | ÷ vmap |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['map']} | {r['ms_per_step']:.2f} | {r['ratio_to_vmap']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--k", type=int, default=10, help="steps per chunk call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    simulate_cpu_devices(8)
    import jax

    header = f"{jax.default_backend()}, jax {jax.__version__}; {load_line()} (at the start)"
    rows = measure(args.workers, args.k, args.rounds, args.calls)
    text = (
        f"# vmap vs a sequential map of the per-worker compute ({args.workers} workers, "
        f"all-reduce SGD, batch 32, K={args.k} steps per call, {args.rounds} interleaved "
        f"rounds of {args.calls} calls)\n\n{header}; at the end: {load_line()}\n\n"
        f"{table(rows)}\n"
    )
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"header": header, "rows": rows}, f, indent=2)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
