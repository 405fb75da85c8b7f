"""Evaluation at the runner's evaluation steps: test metrics of the averaged model and of every
worker, the consensus distance, the distance to a known optimum, and an experiment's own
per-worker evaluation (RL: returns of fresh episodes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdo.data import Dataset
from jdo.train.experiment import Experiment


def _test_batches(dataset: Dataset, batch_size: int):
    n = len(dataset.x_test)
    num = -(-n // batch_size)
    pad = num * batch_size - n
    padded = lambda a: np.concatenate([a, np.repeat(a[:1], pad, 0)]).reshape(
        num, batch_size, *a.shape[1:]
    )
    weight = (np.arange(num * batch_size) < n).astype(np.float32).reshape(num, batch_size)
    return {"x": padded(dataset.x_test), "y": padded(dataset.y_test), "weight": weight}


def consensus_distance(params_stacked) -> jax.Array:
    """``(1/W) Σ_i ||x_i − x̄||²`` over all parameters of the stacked ``[W, ...]`` params."""
    sq = jax.tree.map(
        lambda x: jnp.sum(jnp.square(x - jnp.mean(x, axis=0))) / x.shape[0], params_stacked
    )
    return sum(jax.tree.leaves(sq))


def make_evaluate(exp: Experiment, batch_size: int):
    """``evaluate(params_stacked) -> metrics``: test metrics of the averaged model and of every
    worker (mean/min/max), the consensus distance, and the distance to a known optimum."""
    if exp.dataset is None:  # no test set: only the consensus distance
        return jax.jit(lambda params_stacked: {"consensus": consensus_distance(params_stacked)})
    batches = jax.device_put(_test_batches(exp.dataset, batch_size))
    optimum = exp.dataset.optimum
    if optimum is not None and jax.tree.structure(optimum) != jax.tree.structure(exp.params):
        optimum = None  # the known optimum is for another model (e.g. an MLP on least squares)

    def test_metrics(params):
        def one(batch):
            loss, metrics = exp.loss_fn(params, batch, None)
            total = jnp.sum(batch["weight"])
            return total, {"loss": loss * total, **{k: v * total for k, v in metrics.items()}}

        totals, sums = jax.lax.map(one, batches)
        return {k: jnp.sum(v) / jnp.sum(totals) for k, v in sums.items()}

    @jax.jit
    def evaluate(params_stacked):
        mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), params_stacked)
        out = {f"eval/avg_model/{k}": v for k, v in test_metrics(mean).items()}
        per_worker = jax.vmap(test_metrics)(params_stacked)
        for k, v in per_worker.items():
            out[f"eval/workers/{k}_mean"] = jnp.mean(v)
            out[f"eval/workers/{k}_min"] = jnp.min(v)
            out[f"eval/workers/{k}_max"] = jnp.max(v)
        out["consensus"] = consensus_distance(params_stacked)
        if optimum is not None:
            sq = jax.tree.map(lambda x, o: jnp.sum(jnp.square(x - o)), mean, optimum)
            out["dist_to_opt"] = jnp.sqrt(sum(jax.tree.leaves(sq)))
        return out

    return evaluate
