"""Per-worker loss functions ``loss_fn(params, batch, key) -> (loss, metrics)`` for each data
kind, built from a model's ``apply(params, x)``. All are weighted means over the batch
(``batch["weight"]``) plus ``(l2/2)||θ||²`` over every parameter."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jdo import checks


def _mean(values, weight):
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _l2(params, l2):
    if l2 == 0:
        return 0.0
    return 0.5 * l2 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def make_loss(apply: Callable, kind: str, l2: float = 0.0, augment: Callable | None = None):
    """The loss for data ``kind``: ``"classification"`` (softmax cross-entropy; metric
    ``accuracy``), ``"binary"`` (logistic loss on one logit; ``accuracy``) or
    ``"regression"`` (half mean squared error).

    ``augment(x, key) -> x`` (e.g. :func:`jdo.data.augment.image_augment`) transforms the
    batch's inputs inside the loss when it is given a key (training: every algorithm passes its
    per-worker step key), and not when the key is None (evaluation)."""
    checks.function("apply", apply)
    checks.one_of("kind", kind, ("classification", "binary", "regression"))
    checks.non_negative("l2", l2)
    if augment is not None:
        checks.function("augment", augment)

    def loss_fn(params, batch, key=None):
        x = batch["x"]
        if augment is not None and key is not None:
            x = augment(x, key)
        out = apply(params, x)
        w = batch["weight"]
        if kind == "classification":
            losses = optax.softmax_cross_entropy_with_integer_labels(out, batch["y"])
            metrics = {"accuracy": _mean(jnp.argmax(out, -1) == batch["y"], w)}
        elif kind == "binary":
            logits = out[..., 0]
            losses = optax.sigmoid_binary_cross_entropy(logits, batch["y"].astype(logits.dtype))
            metrics = {"accuracy": _mean((logits > 0) == (batch["y"] > 0), w)}
        else:
            losses = 0.5 * jnp.sum(jnp.square(out - batch["y"]).reshape(out.shape[0], -1), -1)
            metrics = {}
        return _mean(losses, w) + _l2(params, l2), metrics

    return loss_fn
