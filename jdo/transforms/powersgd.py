"""PowerSGD: rank-r compressed all-reduce with error feedback and warm start."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm.collectives import mean, varying


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

    def matrices(leaves, qs, memory, count):
        """Each compressible leaf (error added) as an [n, m] matrix, with its Q for this step."""
        mats, step_qs = {}, {}
        for leaf, (g, q, e) in enumerate(zip(leaves, qs, memory, strict=True)):
            if q is None:
                continue
            mats[leaf] = (g + e if error_feedback else g).reshape(_matrix_shape(g.shape))
            if not warm_start:  # a fresh random Q each step (same on every worker)
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), leaf), count)
                q = jax.random.normal(key, q.shape, q.dtype)
            step_qs[leaf] = q
        return mats, step_qs

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        qs = treedef.flatten_up_to(state.qs)
        memory = treedef.flatten_up_to(state.memory)
        mats, step_qs = matrices(leaves, qs, memory, state.count)
        dense = {i: g for i, (g, q) in enumerate(zip(leaves, qs, strict=True)) if q is None}
        # all-reduce 1: every P = M Q ([n, r]) and the uncompressed leaves, in one call
        ps, dense = mean(({i: mats[i] @ step_qs[i] for i in mats}, dense), axis_name)
        ps = {i: jnp.linalg.qr(p)[0] for i, p in ps.items()}  # orthonormal columns
        new_q = mean({i: mats[i].T @ ps[i] for i in mats}, axis_name)  # all-reduce 2: [m, r]
        out, new_memory = [], list(memory)
        for i, g in enumerate(leaves):
            if i in dense:
                out.append(dense[i])
                continue
            approx = ps[i] @ new_q[i].T
            out.append(approx.reshape(g.shape).astype(g.dtype))
            if error_feedback:
                new_memory[i] = (mats[i] - approx).reshape(g.shape)
        new_qs = [new_q.get(i) for i in range(len(leaves))]
        new_state = PowerSGDState(
            treedef.unflatten(new_qs), treedef.unflatten(new_memory), state.count + 1
        )
        return varying(treedef.unflatten(out), axis_name), varying(new_state, axis_name)

    return optax.GradientTransformation(init_fn, update_fn)
