"""A hand-written, standalone training script (plain JAX + optax, no jdo): the work of jdo's
default experiment, for :mod:`experiments.bench.overhead` to time against the CLI.

    python -m experiments.bench.handwritten_train [--steps 1000]

(as a module: run as a file, its folder's ``checkpoint.py`` etc. would shadow modules JAX imports).

scikit-learn's digits (25% test), an equal random split over 8 workers, an MLP 64-128-128-10,
Adam(1e-3) on the workers' gradients averaged with ``pmean`` under ``vmap``, batches of 32 per
worker drawn with replacement, 50 steps per jitted ``lax.scan`` call, the averaged model
evaluated on the test set every 250 steps. Prints the accuracy, then one JSON line with
``train_s`` (the training calls, compile excluded), ``eval_s``, ``compile_s`` and ``steps_per_s``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

W, BATCH, K, EVAL_EVERY, HIDDEN = 8, 32, 50, 250, (128, 128)


def load(seed=0):
    raw = load_digits()
    x, y = (raw.images / 16.0).astype(np.float32).reshape(len(raw.images), -1), raw.target
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(0.25 * len(x))
    test, train = order[:n_test], order[n_test:]
    parts = np.random.default_rng(seed).permutation(len(train))
    per = len(train) // W
    index = train[np.sort(parts[: W * per].reshape(W, per), axis=1)]
    return (x[index], y[index].astype(np.int32)), (x[test], y[test].astype(np.int32))


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
    logits = mlp(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


opt = optax.adam(1e-3)


def worker_step(state, xs, ys, key, t):
    params, opt_state = state
    k = jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index("workers")), t)
    idx = jax.random.randint(k, (BATCH,), 0, xs.shape[0])
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xs[idx], ys[idx])
    grads = jax.lax.pmean(grads, "workers")
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, acc)


@jax.jit
def train_chunk(state, xs, ys, key, step0):
    step = jax.vmap(worker_step, in_axes=(0, 0, 0, None, None), axis_name="workers")

    def body(state, t):
        return step(state, xs, ys, key, t)

    return jax.lax.scan(body, state, step0 + jnp.arange(K))


@jax.jit
def evaluate(state, x, y):
    mean = jax.tree.map(lambda p: p.mean(0), state[0])
    return loss_fn(mean, x, y)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    steps = parser.parse_args().steps
    (xs, ys), (x_test, y_test) = load()
    params = init_mlp(jax.random.key(0), [xs.shape[-1], *HIDDEN, 10])
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (W, *p.shape)), params)
    state = (params, jax.vmap(opt.init)(params))
    key = jax.random.key(1)
    t0 = time.perf_counter()
    chunk = train_chunk.lower(state, xs, ys, key, 0).compile()
    evaluate(state, x_test, y_test).block_until_ready()
    compile_s, train_s, eval_s = time.perf_counter() - t0, 0.0, 0.0
    for step in range(0, steps, K):
        t0 = time.perf_counter()
        state, (loss, acc) = chunk(state, xs, ys, key, step)
        loss = float(jax.device_get(loss)[-1].mean())
        train_s += time.perf_counter() - t0
        if (step + K) % EVAL_EVERY == 0 or step + K >= steps:
            t0 = time.perf_counter()
            accuracy = float(evaluate(state, x_test, y_test))
            eval_s += time.perf_counter() - t0
            print(f"step {step + K}: loss {loss:.4g} test accuracy {accuracy:.4f}")
    print(
        json.dumps(
            {
                "train_s": train_s,
                "eval_s": eval_s,
                "compile_s": compile_s,
                "steps_per_s": steps / train_s,
                "accuracy": accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
