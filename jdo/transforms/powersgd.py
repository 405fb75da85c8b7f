"""PowerSGD: rank-r compressed all-reduce with error feedback and warm start."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm.collectives import varying


class PowerSGDState(NamedTuple):
    qs: Any  # per leaf: the [m, r] right factor Q (warm start), or None for dense leaves
    memory: Any  # per leaf: the error e_i (zeros for dense leaves)
    count: jax.Array


def _matrix_shape(shape) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def powersgd(
    rank: int = 4,
    *,
    min_compression: float = 2.0,
    warm_start: bool = True,
    error_feedback: bool = True,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""PowerSGD (Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient Compression for
    Distributed Optimization"): each matrix-shaped update ``M`` (leaves of 2+ dims, viewed as
    ``[shape[0], rest]``) is averaged as a rank-r product through two small all-reduces:

    .. math:: M_i' = M_i + e_i, \quad P = \tfrac1W\sum_i M_i' Q, \quad
              \hat P = \mathrm{orth}(P), \quad Q = \tfrac1W\sum_i M_i'^\top \hat P, \quad
              \hat M = \hat P Q^\top, \quad e_i \leftarrow M_i' - \hat M.

    ``Q`` is kept between steps (warm start: one power iteration per step). Leaves with fewer
    than 2 dims, or where ``(n + m)·r`` would not be ``min_compression`` times smaller than
    ``n·m``, are all-reduced densely. With ``rank >= min(n, m)`` the result is the exact mean.
    """
    checks.positive_int("rank", rank)
    checks.positive("min_compression", min_compression)
    checks.integer("seed", seed)

    def compressible(x) -> bool:
        if x.ndim < 2:
            return False
        n, m = _matrix_shape(x.shape)
        return (n + m) * rank * min_compression <= n * m or rank >= min(n, m)

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        qs = []
        for x, k in zip(leaves, keys, strict=True):
            if compressible(x):
                n, m = _matrix_shape(x.shape)
                qs.append(jax.random.normal(k, (m, min(rank, n, m)), x.dtype))
            else:
                qs.append(None)
        memory = jax.tree.map(jnp.zeros_like, params)
        return PowerSGDState(jax.tree.unflatten(treedef, qs), memory, jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        qs = treedef.flatten_up_to(state.qs)
        memory = treedef.flatten_up_to(state.memory)
        out, new_qs, new_memory = [], [], []
        for leaf, (g, q, e) in enumerate(zip(leaves, qs, memory, strict=True)):
            if q is None:
                out.append(jax.lax.pmean(g, axis_name))
                new_qs.append(None)
                new_memory.append(e)
                continue
            n, m = _matrix_shape(g.shape)
            mat = (g + e if error_feedback else g).reshape(n, m)
            if not warm_start:  # a fresh random Q each step (same on every worker)
                key = jax.random.fold_in(
                    jax.random.fold_in(jax.random.key(seed), leaf), state.count
                )
                q = jax.random.normal(key, q.shape, q.dtype)
            p = jax.lax.pmean(mat @ q, axis_name)  # all-reduce 1: [n, r]
            p, _ = jnp.linalg.qr(p)  # orthonormal columns
            q_new = jax.lax.pmean(mat.T @ p, axis_name)  # all-reduce 2: [m, r]
            approx = p @ q_new.T
            out.append(approx.reshape(g.shape).astype(g.dtype))
            new_qs.append(q_new)
            new_memory.append((mat - approx).reshape(g.shape) if error_feedback else e)
        new_state = PowerSGDState(
            treedef.unflatten(new_qs), treedef.unflatten(new_memory), state.count + 1
        )
        return varying(treedef.unflatten(out), axis_name), varying(new_state, axis_name)

    return optax.GradientTransformation(init_fn, update_fn)
