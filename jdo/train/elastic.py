"""Changing the number of workers on resume (``checkpoint.elastic=average``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def regroup(params_stacked, num_workers: int):
    """``[W_old, ...]`` per-worker params -> ``[num_workers, ...]``.

    If ``W_old`` is a multiple of ``num_workers``, new worker ``j`` gets the average of old
    workers ``j·g … j·g + g − 1`` (``g = W_old / num_workers``); if ``num_workers`` is a
    multiple of ``W_old``, each old worker is copied into ``num_workers / W_old`` new ones;
    otherwise every new worker gets the average of all old workers.
    """

    def one(x):
        old = x.shape[0]
        if old % num_workers == 0:
            return jnp.mean(x.reshape(num_workers, old // num_workers, *x.shape[1:]), axis=1)
        if num_workers % old == 0:
            return jnp.repeat(x, num_workers // old, axis=0)
        return jnp.broadcast_to(jnp.mean(x, axis=0), (num_workers, *x.shape[1:]))

    return jax.tree.map(one, params_stacked)
