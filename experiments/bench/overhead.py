"""Overhead of jdo's all-reduce SGD step against a hand-written JAX step.

    python -m experiments.bench.overhead [--rounds 20] [--calls 10] [--batch 32]

Same MLP (64-128-128-10, digits-sized), same per-worker batch, same optimizer (Adam), 8 workers;
both steps return the loss and the accuracy:
  * shard_map: jdo.lift(jdo.algorithms.allreduce_sgd(...).step, "shard_map") vs
    jax.jit(jax.shard_map(step with lax.pmean of the grads)) on 8 devices;
  * vmap: jdo.lift(..., "vmap") vs jax.jit(jax.vmap(step, axis_name=...)) on one device.
Reported as ratios (jdo ÷ hand-written) of the minimum of per-round minima, with A/A controls
(hand-written ÷ a second jit of itself). Goal: <= 1.10.
"""

from __future__ import annotations

import argparse
import functools

from experiments.bench.common import interleaved_min, simulate_cpu_devices

W = 8


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    simulate_cpu_devices(W)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jdo

    liftings = ("shard_map", "vmap") if jax.device_count() >= W else ("vmap",)
    mesh = jdo.train.make_mesh(W) if "shard_map" in liftings else None
    apply, params = jdo.models.functional(jdo.models.MLP((64,), 10, rngs=nnx.Rngs(0)))
    loss_fn = jdo.data.make_loss(apply, "classification")
    optimizer = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(W, args.batch, 64)).astype(np.float32),
        "y": rng.integers(0, 10, size=(W, args.batch)).astype(np.int32),
        "weight": np.ones((W, args.batch), np.float32),
    }
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (W, *p.shape)), params)
    keys = jax.random.split(jax.random.key(0), W)

    # -- hand-written baseline: plain JAX, no jdo -----------------------------------------------
    def hand_step(params, opt_state, batch):
        # Like jdo's step it returns the loss and the loss function's metrics (accuracy).
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        grads = jax.lax.pmean(grads, "workers")
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    def hand_shard_map():
        def block(p, s, b):
            sq = lambda t: jax.tree.map(lambda x: x[0], t)
            out = hand_step(sq(p), sq(s), sq(b))
            return jax.tree.map(lambda x: x[None], out)

        spec = P("workers")
        return jax.jit(jax.shard_map(block, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec))

    hand_vmap = lambda: jax.jit(jax.vmap(hand_step, axis_name="workers"))

    # -- jdo ------------------------------------------------------------------------------------
    algo = jdo.algorithms.allreduce_sgd(loss_fn, optimizer)

    def jdo_step(lifting):
        return jax.jit(jdo.lift(algo.step, lifting, mesh=mesh))

    def inputs(lifting):
        place = (
            (lambda t: jax.device_put(t, NamedSharding(mesh, P("workers"))))
            if lifting == "shard_map"
            else jax.device_put
        )
        opt_state = jax.vmap(optimizer.init)(stacked)
        state = jax.jit(jdo.lift(algo.init, "vmap", in_axes=(None, 0)))(params, keys)
        return place(stacked), place(opt_state), place(batch), place(state), place(keys)

    rows = []
    for lifting in liftings:
        make_hand = hand_shard_map if lifting == "shard_map" else hand_vmap
        p, s, b, state, k = inputs(lifting)
        hand, hand_again, ours = make_hand(), make_hand(), jdo_step(lifting)
        # Functions of fixed inputs: the same work each call, no state carried between calls.
        times = interleaved_min(
            {
                "hand": functools.partial(hand, p, s, b),
                "hand_again": functools.partial(hand_again, p, s, b),
                "jdo": functools.partial(ours, state, b, k),
            },
            rounds=args.rounds,
            calls=args.calls,
        )
        rows.append(
            {
                "lifting": lifting,
                "hand_us": 1e6 * times["hand"],
                "jdo_us": 1e6 * times["jdo"],
                "jdo/hand": times["jdo"] / times["hand"],
                "A/A": times["hand_again"] / times["hand"],
            }
        )
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, {W} workers, "
        f"batch {args.batch}/worker"
    )
    if "shard_map" not in liftings:
        print(f"(shard_map row skipped: it needs {W} devices)")
    print("| lifting | hand-written (µs) | jdo (µs) | jdo ÷ hand | A/A control |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['lifting']} | {r['hand_us']:.0f} | {r['jdo_us']:.0f} | "
            f"{r['jdo/hand']:.3f} | {r['A/A']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    main()
