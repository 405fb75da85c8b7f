"""Collectives over the worker axis, written for one worker, with dense numpy references.

Each function takes one worker's value ``x`` and must run under a lifting that binds
``axis_name`` (``jax.vmap(..., axis_name=)``, ``jax.shard_map`` over a mesh axis, ``jax.pmap``).
Each ``*_reference`` takes the stacked value ``xs`` (leading ``[W]`` axis, numpy) and returns the
stacked result every worker should hold.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import WORKERS
from jdo._axis import varying as varying  # re-exported: jdo.comm.varying
from jdo._logical import all_gather as gather_workers
from jdo._logical import axis_index, axis_size, pmean, psum, psum_scatter
from jdo.system import clock


def worker_index(axis_name: str = WORKERS) -> jax.Array:
    """This worker's index in ``[0, W)`` (int32 scalar; under the hybrid lifting the logical
    index ``device·k + local``)."""
    return axis_index(axis_name)


def num_workers(axis_name: str = WORKERS) -> int:
    """The number of workers W on ``axis_name`` (a static Python int)."""
    return axis_size(axis_name)


def mean(x, axis_name: str = WORKERS):
    """All-reduce mean of a pytree: every worker gets ``(1/W) Σ_j x_j`` (one all-reduce: a
    barrier for the clock, :mod:`jdo.system.clock`)."""
    clock.barrier("all-reduce", clock.tree_bytes(x), axis_name)
    return pmean(x, axis_name)


def sum(x, axis_name: str = WORKERS):  # noqa: A001 - mirrors lax.psum
    """All-reduce sum of a pytree: every worker gets ``Σ_j x_j`` (one all-reduce)."""
    clock.barrier("all-reduce", clock.tree_bytes(x), axis_name)
    return psum(x, axis_name)


def backup_mean(x, backup_workers: int, axis_name: str = WORKERS):
    """Synchronous all-reduce with backup workers (Chen et al. 2016, "Revisiting Distributed
    Synchronous SGD"): the mean of the ``W − b`` contributions that are ready first by simulated
    time, ``(1/(W−b)) Σ_{j ∈ first} x_j``; the ``b`` latest are dropped and abandon their step.
    The order of arrival is the running simulated clock's (:mod:`jdo.system.clock`); with none
    every worker is ready at once and the tie rule keeps the ``W − b`` lowest indices. One
    all-reduce of the masked values (its clock starts at the (W−b)-th arrival)."""
    n = axis_size(axis_name)
    b = checks.integer("backup_workers", backup_workers, minimum=0)
    if b >= n:
        raise checks.InvalidArgument(
            "backup_workers", f"must be less than the {n} workers, got {b}"
        )
    if b == 0:
        return mean(x, axis_name)
    keep = clock.first_to_arrive(n - b, axis_name)
    clock.barrier("all-reduce", clock.tree_bytes(x), axis_name, wait_for=n - b)
    masked = jax.tree.map(lambda a: jnp.where(keep, a, jnp.zeros_like(a)), x)
    return jax.tree.map(lambda a: a / (n - b), psum(masked, axis_name))


def all_gather(x, axis_name: str = WORKERS):
    """All-gather of a pytree: every worker gets the stacked ``[W, ...]`` pytree of all the
    workers' ``x`` (one all-gather of ``W ·`` the pytree's bytes: a barrier for the clock)."""
    n = axis_size(axis_name)
    clock.barrier("all-gather", n * clock.tree_bytes(x), axis_name)
    return gather_workers(x, axis_name)


def reduce_scatter(x, axis_name: str = WORKERS, *, op: str = "mean"):
    """Reduce-scatter of a pytree: every leaf's leading axis (a multiple of W) is cut into W
    equal blocks and worker ``i`` gets block ``i`` of ``Σ_j x_j`` (``op="mean"``: of
    ``(1/W) Σ_j x_j``). One reduce-scatter of the pytree's bytes (nccl-tests' buffer size is
    its input; a barrier for the clock)."""
    checks.one_of("op", op, ("mean", "sum"))
    n = axis_size(axis_name)
    for leaf in jax.tree.leaves(x):
        if not jnp.ndim(leaf) or jnp.shape(leaf)[0] % n:
            raise checks.InvalidArgument(
                "x",
                f"leaves need a leading axis that is a multiple of the {n} workers, "
                f"got shape {jnp.shape(leaf)}",
            )
    clock.barrier("reduce-scatter", clock.tree_bytes(x), axis_name)
    out = psum_scatter(x, axis_name)
    return out if op == "sum" else jax.tree.map(lambda a: a / n, out)


def gather_mean(payloads, decode, axis_name: str = WORKERS, weights=None):
    """The all-reduce of compressed values: all-gathers every worker's ``payloads`` (what
    travels) and returns ``Σ_j weights_j · decode(payload_j)`` (the plain mean without
    ``weights``, a ``[W]`` vector the same on every worker)."""
    decoded = jax.vmap(decode)(all_gather(payloads, axis_name))  # every leaf [W, ...]
    if weights is None:
        return jax.tree.map(lambda d: d.mean(axis=0), decoded)
    return jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), decoded)


def mean_reference(xs: np.ndarray) -> np.ndarray:
    """Dense reference for :func:`mean` on stacked ``xs: [W, ...]``."""
    xs = np.asarray(xs)
    return np.broadcast_to(xs.mean(axis=0, keepdims=True), xs.shape).copy()


def all_gather_reference(xs: np.ndarray) -> np.ndarray:
    """Dense reference for :func:`all_gather` on stacked ``xs: [W, ...]``: ``[W, W, ...]``,
    every worker holding all of ``xs``."""
    xs = np.asarray(xs)
    return np.broadcast_to(xs[None], (xs.shape[0], *xs.shape)).copy()


def sum_reference(xs: np.ndarray) -> np.ndarray:
    """Dense reference for :func:`sum` on stacked ``xs: [W, ...]``."""
    xs = np.asarray(xs)
    return np.broadcast_to(xs.sum(axis=0, keepdims=True), xs.shape).copy()


def reduce_scatter_reference(xs: np.ndarray, op: str = "mean") -> np.ndarray:
    """Dense reference for :func:`reduce_scatter` on stacked ``xs: [W, W·S, ...]``: worker
    ``i`` holds rows ``[i·S, (i+1)·S)`` of the sum (or mean) over workers, ``[W, S, ...]``."""
    xs = np.asarray(xs)
    total = xs.sum(axis=0) if op == "sum" else xs.mean(axis=0)
    return total.reshape(xs.shape[0], xs.shape[1] // xs.shape[0], *xs.shape[2:])
