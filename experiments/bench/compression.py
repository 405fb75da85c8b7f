"""Communication-efficient methods in steps and bytes to a target loss.

    python -m experiments.bench.compression [--workers 8] [--out experiments/bench/results]

Deterministic counts, no timing. Two problems with stochastic gradients (batch 32 per worker,
iid parts): l2-regularised logistic regression (d = 256, known optimum; target: f(x̄) − f* ≤
1e-2 · (f(x0) − f*)) and the MLP on digits (target: training loss of the averaged model ≤ 0.15).
The same step size for every method on a problem. For each method: steps to the target (checked
every 8 steps), communication rounds (steps that communicate), the bytes of one communicating
step from its lowered HLO (jdo.comm.worker_ops): the operands (payload) and the wire bytes one
worker sends under ring collectives (jdo.system.wire_bytes: an all-reduce of S sends
2(n−1)/n·S, an all-gather (n−1) × the payload, a permute its message), and wire bytes to the
target (rounds × wire bytes per round), against uncompressed all-reduce and, for CHOCO, exact
gossip on the same ring.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jdo
from jdo import compress as C
from jdo import topology as T

BATCH, CHECK_EVERY = 32, 8


def _problem(name, workers):
    if name == "logistic":
        ds = jdo.data.logistic_regression(num_samples=8192, dim=256, l2=1e-3, seed=0)
        model = jdo.models.Linear(ds.in_shape, 1, rngs=nnx.Rngs(0))
        lr, max_steps = 0.5, 3000
    else:
        ds = jdo.data.digits()
        model = jdo.models.MLP(ds.in_shape, 10, hidden=(128, 128), rngs=nnx.Rngs(0))
        lr, max_steps = 0.1, 3000
    parts = jdo.data.partition.iid(len(ds.x_train), workers, seed=0)
    data = jdo.data.partition.stack(ds.x_train, ds.y_train, parts)
    apply, params = jdo.models.functional(model)
    loss_fn = jdo.data.make_loss(apply, ds.kind, ds.l2)
    index = np.concatenate(parts)
    full = {"x": ds.x_train[index], "y": ds.y_train[index], "weight": np.ones(len(index))}
    objective = jax.jit(lambda p: loss_fn(p, full)[0])
    if name == "logistic":
        optimum = jdo.data.synthetic.optimum_of_parts(ds, parts)
        f_star = float(objective(jax.tree.map(jnp.asarray, optimum)))
        target = f_star + 1e-2 * (float(objective(params)) - f_star)
    else:
        target = 0.15
    return loss_fn, params, data, objective, target, lr, max_steps


def _methods(lr, workers):
    sgd = optax.sgd(lr)
    ring = T.ring(workers)
    return {
        "all-reduce SGD": (jdo.algorithms.allreduce_sgd, {}, 1),
        "top-1% + EF": (jdo.algorithms.compressed_sgd, {"compressor": C.top_k(0.01)}, 1),
        "top-1% + EF21": (
            jdo.algorithms.compressed_sgd,
            {"compressor": C.top_k(0.01), "error_feedback": "ef21"},
            1,
        ),
        "QSGD 16 levels": (
            jdo.algorithms.compressed_sgd,
            {"compressor": C.qsgd(16), "error_feedback": None},
            1,
        ),
        "scaled sign + EF": (jdo.algorithms.compressed_sgd, {"compressor": C.scaled_sign()}, 1),
        "PowerSGD rank 2": (jdo.algorithms.powersgd, {"rank": 2}, 1),
        "local SGD H=16": (jdo.algorithms.local_sgd, {"every": 16}, 16),
        "DiLoCo H=64": (jdo.algorithms.diloco, {"sync_every": 64}, 64),
        "FedAvg H=16, 50%": (jdo.algorithms.fedavg, {"local_steps": 16, "participation": 0.5}, 16),
        "exact gossip (ring)": (jdo.algorithms.dpsgd, {"topology": ring}, 1),
        "CHOCO top-1% (ring)": (
            jdo.algorithms.choco_sgd,
            {"topology": ring, "compressor": C.top_k(0.01), "gamma": 0.05},
            1,
        ),
    }, sgd


def _measure(algo, params, data, objective, target, max_steps, workers, period):
    def worker_step(state, x, y, count, t):  # the runner's batch keys
        key = jax.random.fold_in(
            jax.random.fold_in(jax.random.key(0), jax.lax.axis_index("workers")), t
        )
        batch = jdo.data.sample_batch(x, y, count, key, BATCH)
        return algo.step(state, batch, key)[0]

    step = jax.vmap(worker_step, in_axes=(0, 0, 0, 0, None), axis_name="workers")
    params_of = jax.vmap(algo.params)

    @jax.jit
    def chunk(state, t0):
        state = jax.lax.fori_loop(t0, t0 + CHECK_EVERY, lambda t, s: step(s, *data, t), state)
        mean = jax.tree.map(lambda p: p.mean(0), params_of(state))
        return state, objective(mean)

    state = jax.vmap(algo.init, in_axes=(None, 0), axis_name="workers")(
        params, jnp.zeros((workers, 2), jnp.uint32)
    )
    reached, curve = None, []
    for c in range(max_steps // CHECK_EVERY):
        state, value = chunk(state, c * CHECK_EVERY)
        curve.append(float(value))
        if curve[-1] <= target:
            reached = (c + 1) * CHECK_EVERY
            break
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (state, tuple(data)))
    ops = jdo.comm.worker_ops(
        worker_step,
        workers,
        one[0],
        *one[1],
        jnp.int32(0),
        in_axes=(0, 0, 0, 0, None),
        platform=jax.default_backend(),
    )
    per_round = round(sum(jdo.system.wire_bytes(op) * op.count for op in ops))  # ring
    payload = sum(op.payload_bytes * op.count for op in ops)
    steps = CHECK_EVERY * np.arange(1, len(curve) + 1)
    return reached, (per_round, payload), (steps // period * per_round, np.asarray(curve))


def _plot(curves, target, problem, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.get_cmap("tab20").colors
    for i, (name, (sent, values)) in enumerate(curves.items()):
        ax.plot(np.maximum(sent, 1), values, label=name, lw=1.2, color=colours[2 * i % 20])
    ax.axhline(target, color="gray", lw=0.6, ls="--")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="wire bytes sent per worker (ring collectives)",
        ylabel="objective of the averaged model",
        title=f"{problem}: loss vs bytes",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--problems", nargs="+", default=["logistic", "mlp"])
    parser.add_argument("--out", default=os.path.join("experiments", "bench", "results"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = []
    for problem in args.problems:
        loss_fn, params, data, objective, target, lr, max_steps = _problem(problem, args.workers)
        methods, sgd = _methods(lr, args.workers)
        rows, curves = {}, {}
        for name, (factory, kwargs, period) in methods.items():
            if problem == "logistic" and name.startswith("PowerSGD"):
                continue  # no matrix-shaped parameter in a linear model
            algo = factory(loss_fn, sgd, **kwargs)
            steps, (per_round, payload), curve = _measure(
                algo, params, data, objective, target, max_steps, args.workers, period
            )
            rows[name] = (steps, per_round, period, payload)
            curves[name] = curve
            print(problem, name, steps, per_round, flush=True)
        lines += [
            f"\n**{problem}, {args.workers} workers** (step {lr}; × = ratio to the "
            "baseline: all-reduce SGD, or exact gossip for CHOCO)\n",
            "| method | steps | × steps | rounds | payload bytes/round | wire bytes/round/worker "
            "| wire bytes to target | × bytes |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, (steps, per_round, period, payload) in rows.items():
            base = rows["exact gossip (ring)" if "CHOCO" in name else "all-reduce SGD"]
            if steps is None or base[0] is None:
                lines.append(
                    f"| {name} | — (>{max_steps}) | — | — | {payload:,} | {per_round:,} | — | — |"
                )
                continue
            rounds, base_rounds = steps // period, base[0] // base[2]
            total, base_total = rounds * per_round, base_rounds * base[1]
            lines.append(
                f"| {name} | {steps} | {steps / base[0]:.2f} | {rounds} | {payload:,} | "
                f"{per_round:,} | {total:,} | {total / base_total:.3f} |"
            )
        _plot(curves, target, problem, os.path.join(args.out, f"compression_{problem}.png"))
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "compression.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
