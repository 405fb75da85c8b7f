"""What a checkpoint costs the training loop: the blocking part of an asynchronous save.

    python -m experiments.bench.checkpoint [--params 10_000_000]

The state is a model of ``--params`` float32 parameters with Adam's two moments (3x the
parameters, as in a real run). Timed in interleaved rounds, medians over rounds:
- digest: jdo's content digest alone (one pass over the state on the device);
- blocking: what ``Checkpointer.save`` costs the loop (digest + orbax's device-to-host copy);
- full: the same save waited on until committed (what a synchronous save would cost);
- train step: one jitted Adam step on the same state, for scale.
Writes experiments/bench/results/checkpoint.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

from jdo.train.checkpoint import Checkpointer, tree_digest

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def make_state(num_params: int):
    half = num_params // 2
    params = {"w1": jnp.ones((half,), jnp.float32), "w2": jnp.ones((num_params - half,))}
    opt = optax.adam(1e-3)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}

    @jax.jit
    def step(state):
        grads = jax.tree.map(lambda p: jnp.sin(p) * 1e-3, state["params"])
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}

    return state, step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    state, step = make_state(args.params)
    state = jax.block_until_ready(step(state))
    directory = tempfile.mkdtemp(prefix="jdo-bench-ckpt-")
    times = {"digest": [], "blocking": [], "full": [], "train step": []}
    try:
        with Checkpointer(directory, keep_last=2) as ckpt:
            tree_digest(state)  # compile
            ckpt.save(0, state, {})
            ckpt.wait()
            for r in range(1, args.rounds + 1):
                t0 = time.perf_counter()
                tree_digest(state)
                times["digest"].append(time.perf_counter() - t0)
                times["blocking"].append(ckpt.save(2 * r, state, {}))
                ckpt.wait()
                t0 = time.perf_counter()
                ckpt.save(2 * r + 1, state, {})
                ckpt.wait()
                times["full"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                state = jax.block_until_ready(step(state))
                times["train step"].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    lines = [
        f"# Checkpoint cost: {args.params:,} parameters + Adam moments "
        f"({nbytes / 2**20:.0f} MiB), {jax.default_backend()} ({jax.devices()[0].device_kind})",
        "",
        "| part | median s | / full save |",
        "| --- | ---: | ---: |",
        *(f"| {k} | {v:.4f} | {v / med['full']:.3f} |" for k, v in med.items()),
        "",
        f"Medians of {args.rounds} interleaved rounds: `python -m experiments.bench.checkpoint "
        f"--params {args.params}`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    tag = "" if jax.default_backend() == "cpu" else f"_{jax.default_backend()}"
    with open(os.path.join(RESULTS, f"checkpoint{tag}.md"), "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
