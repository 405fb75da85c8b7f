"""Topologies compared in steps and bytes: consensus, D-PSGD and gradient tracking.

    python -m experiments.bench.topologies [--sizes 8 16 32] [--out experiments/bench/results]

Deterministic counts, no timing. For each worker count n and topology:
  * consensus: gossip steps until the consensus error (1/n) Σ_i ||x_i − x̄||² falls to 1e-6
    of its start (random x, the same for every topology), and the bytes one worker sends;
  * optimisation: heterogeneous least squares (each worker its own local optimum), full-batch
    gradients, a constant step tuned per method and topology on a grid (factors of √2 from
    0.0125 to 1.6, all run at once with vmap): steps until the averaged model's suboptimality
    f(x̄) − f* falls to 1e-6 of its start, for gradient tracking and D-PSGD on each topology
    against all-reduce gradient descent, at one common step and at each method's best step.
    D-PSGD with a constant step stalls at a bias (∝ step) on heterogeneous data: it gets there
    only with a step small enough, if at all ("—").
Bytes per step come from the lowered HLO (jdo.comm.worker_bytes). Writes a markdown table and a
consensus-error-vs-step plot.
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
from jdo import topology as T

TOPOLOGIES = {
    "ring": T.ring,
    "torus": T.torus,
    "exponential": T.exponential,
    "sym. exponential": T.symmetric_exponential,
    "one-peer exp.": T.one_peer_exponential,
    "star": T.star,
    "erdos-renyi p=0.5": lambda n: T.erdos_renyi(n, 0.5, seed=0),
    "complete (all-reduce)": T.complete,
}
CONSENSUS_TARGET = 1e-6
SUBOPT_TARGET = 1e-6
MAX_STEPS = 3000
STEP_GRID = 0.0125 * np.sqrt(2.0) ** np.arange(15)  # 0.0125 ... 1.6
COMMON_STEP = 0.05  # a step every gradient-tracking variant converges with at n <= 32


def _first_below(curve: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(curve <= target)
    return int(hits[0]) + 1 if hits.size else None


def consensus_curves(n: int, steps: int = 2000):
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(n, 64)), jnp.float64)
    start = float(jnp.mean(jnp.sum((xs - xs.mean(0)) ** 2, -1)))
    out = {}
    for name, make in TOPOLOGIES.items():
        topo = make(n)
        mix = jax.vmap(
            lambda x, t, topo=topo: jdo.comm.mix(x, topo, t), in_axes=(0, None), axis_name="workers"
        )

        def body(x, t, mix=mix):
            x = mix(x, t)
            return x, jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1))

        _, curve = jax.jit(lambda x, body=body: jax.lax.scan(body, x, jnp.arange(steps)))(xs)
        per_step = sum(
            jdo.comm.worker_bytes(
                lambda x, t, topo=topo: jdo.comm.mix(x, topo, t),
                n,
                xs[0],
                jnp.int32(0),
                in_axes=(0, None),
                platform=jax.default_backend(),
            ).values()
        )
        out[name] = (topo, np.asarray(curve) / start, per_step)
    return out


def optimisation(n: int):
    ds = jdo.data.heterogeneous_least_squares(num_groups=n, samples_per_group=64, dim=16, seed=0)
    data = jdo.data.partition.stack(
        ds.x_train, ds.y_train, jdo.data.partition.natural(ds.groups, n)
    )
    apply, params = jdo.models.functional(jdo.models.Linear(ds.in_shape, 1, rngs=nnx.Rngs(0)))
    loss_fn = jdo.data.make_loss(apply, "regression")
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    batch = to64({"x": data.x, "y": data.y, "weight": np.ones(data.y.shape[:2])})
    params = to64(params)
    full = to64({"x": ds.x_train, "y": ds.y_train, "weight": np.ones(len(ds.x_train))})
    f = lambda p: loss_fn(p, full)[0]
    f_star = float(f(to64(ds.optimum)))
    start = float(f(params)) - f_star

    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # the step lives in the state

    def run(algo):
        step = jax.vmap(algo.step, in_axes=(0, 0, None), axis_name="workers")
        params_of = jax.vmap(algo.params)

        def body(s, _):
            s, _ = step(s, batch, jax.random.key(0))
            mean = jax.tree.map(lambda x: x.mean(0), params_of(s))
            return s, f(mean) - f_star

        def curve(lr):
            init = jax.vmap(algo.init, in_axes=(None, 0), axis_name="workers")
            state = init(params, jnp.zeros((n, 2), jnp.uint32))
            state = optax.tree_utils.tree_set(state, learning_rate=jnp.full((n,), lr))
            return jax.lax.scan(body, state, None, length=MAX_STEPS)[1]

        curves = np.asarray(jax.jit(jax.vmap(curve))(jnp.asarray(STEP_GRID)))
        steps = [_first_below(c / start, SUBOPT_TARGET) for c in curves]
        common = steps[int(np.argmin(np.abs(STEP_GRID - COMMON_STEP)))]
        found = [(k, lr) for k, lr in zip(steps, STEP_GRID, strict=True) if k is not None]
        best = min(found) if found else (None, None)
        state = jax.vmap(algo.init, in_axes=(None, 0), axis_name="workers")(
            params, jnp.zeros((n, 2), jnp.uint32)
        )
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (state, batch))
        per_step = sum(
            jdo.comm.worker_bytes(
                algo.step,
                n,
                *one,
                jax.random.key(0),
                in_axes=(0, 0, None),
                platform=jax.default_backend(),
            ).values()
        )
        return common, *best, per_step

    rows = {"all-reduce GD": run(jdo.algorithms.allreduce_sgd(loss_fn, sgd))}
    for name, make in TOPOLOGIES.items():
        if name.startswith("complete"):
            continue
        for alg in ("gradient_tracking", "dpsgd"):
            rows[f"{alg} / {name}"] = run(jdo.algorithms.get(alg)(loss_fn, sgd, make(n)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--out", default=os.path.join("experiments", "bench", "results"))
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # counts of steps, not float32 rounding floors
    os.makedirs(args.out, exist_ok=True)
    lines = []
    curves_for_plot = {}
    for n in args.sizes:
        curves = consensus_curves(n)
        curves_for_plot[n] = curves
        lines += [
            f"\n**Consensus, n = {n}** (steps to error ≤ {CONSENSUS_TARGET:g} of start)\n",
            "| topology | spectral gap | ppermutes/step | steps | bytes/step/worker "
            "| bytes to target |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, (topo, curve, per_step) in curves.items():
            steps = _first_below(curve, CONSENSUS_TARGET)
            total = "—" if steps is None else f"{steps * per_step:,}"
            lines.append(
                f"| {name} | {topo.spectral_gap():.4f} | {topo.rounds_per_step} | "
                f"{steps or '—'} | {per_step:,} | {total} |"
            )
        rows = optimisation(n)
        ar_common, ar_best, _, ar_bytes = rows["all-reduce GD"]
        lines += [
            f"\n**Heterogeneous least squares, n = {n}** (steps to f(x̄) − f* ≤ "
            f"{SUBOPT_TARGET:g} of the start; × = ratio to all-reduce GD)\n",
            f"| method / topology | steps, step {COMMON_STEP} | × | best step | steps | × "
            "| bytes/step/worker | bytes to target (best) | × |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, (common, best, lr, per_step) in rows.items():
            cells = [name, common or "—", f"{common / ar_common:.2f}" if common else "—"]
            if best is None:
                cells += ["—", "—", "—", f"{per_step:,}", "—", "—"]
            else:
                total = best * per_step
                cells += [
                    f"{lr:.3g}",
                    best,
                    f"{best / ar_best:.2f}",
                    f"{per_step:,}",
                    f"{total:,}",
                    f"{total / (ar_best * ar_bytes):.1f}",
                ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "topologies.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    _plot(curves_for_plot, os.path.join(args.out, "consensus.png"))


def _plot(curves_for_plot, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(curves_for_plot), figsize=(4.2 * len(curves_for_plot), 3.4), sharey=True
    )
    for ax, (n, curves) in zip(np.atleast_1d(axes), curves_for_plot.items(), strict=True):
        for name, (_, curve, _) in curves.items():
            label = name + (": exact in 1 step" if name.startswith("complete") else "")
            ax.plot(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-16), label=label)
        ax.set(xscale="log", yscale="log", xlabel="gossip step", title=f"n = {n}", ylim=(1e-12, 2))
        ax.axhline(CONSENSUS_TARGET, color="gray", lw=0.5, ls="--")
    np.atleast_1d(axes)[0].set_ylabel("consensus error / start")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
