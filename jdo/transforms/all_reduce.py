"""All-reduce of updates across workers as an optax transform."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm import collectives
from jdo.comm.control import cond
from jdo.comm.hierarchical import hierarchical_mean, hierarchical_sum
from jdo.faults import NetworkFault, network_faults, rejoining


class FaultyAllReduceState(NamedTuple):
    count: jax.Array  # int32: updates so far (the step of the fault masks)


def all_reduce(
    axis_name: str | tuple[str, str] = WORKERS,
    *,
    op: Literal["mean", "sum"] = "mean",
    faults=None,
    backup_workers: int = 0,
    hierarchical: bool = False,
) -> optax.GradientTransformation:
    r"""Averages (or sums) the incoming updates over the workers on ``axis_name``.

    Every worker ``i`` holding update :math:`g_i` gets

    .. math:: g_i \leftarrow \frac{1}{W} \sum_{j=1}^{W} g_j \quad (\text{op="mean"}), \qquad
              g_i \leftarrow \sum_{j=1}^{W} g_j \quad (\text{op="sum"}).

    Placed first in a chain it gives synchronous data-parallel SGD (mini-batch SGD over the
    union of the workers' batches; Dean et al. 2012, Goyal et al. 2017):
    ``optax.chain(jdo.transforms.all_reduce(), optax.adam(1e-3))``. It must run under a lifting
    that binds ``axis_name``: ``jax.vmap(..., axis_name=)``, ``jax.shard_map`` over that mesh
    axis, or ``jax.pmap(..., axis_name=)``. It holds no state.

    With ``faults`` (:mod:`jdo.faults`; the transform then counts its updates from 0 in its
    state) the t-th update averages what reached each worker: with ``M = faults.delivered(t,
    W)`` (symmetric: the complete graph is undirected),

    .. math:: g_i \leftarrow \frac{1}{|\{j : M_{ij}\}|} \sum_{j : M_{ij}} g_j

    (its own included; ``op="sum"``: the sum). The communication is then one all-gather of
    every worker's update (W times the bytes, counted and clocked as an all-gather), each
    worker keeping the rows that arrived; a lost row is never read. A crashed worker
    (``node_crash``) neither sends nor updates: its update is zero while it is down. When it
    rejoins it takes the current average: its update lands its parameters on the mean of the
    parameters of the workers that stayed up (and reached it), plus the averaged update; that
    needs ``params`` and updates that are parameter changes, so put the transform after the
    optimizer (``optax.chain(optax.sgd(lr), all_reduce(faults=...))``, the same as before it
    for SGD).

    Args:
      axis_name: the named axis the workers live on.
      op: ``"mean"`` (default) or ``"sum"``.
      faults: None, a network fault (``jdo.faults.link_drop(p)``, ``node_crash(...)``) or a
        list of them.
      backup_workers: ``b > 0``: each update averages the ``W − b`` workers ready first by
        simulated time and drops the ``b`` latest (Chen et al. 2016, "Revisiting Distributed
        Synchronous SGD"; :func:`jdo.comm.backup_mean`): needs a simulated cluster's clock
        (a run with ``cluster=...``); ``op="mean"``, no ``faults``.
      hierarchical: the hierarchical all-reduce over a two-level worker axis (Horovod, NCCL;
        :func:`jdo.comm.hierarchical_mean`): ``axis_name`` is then ``(nodes, local)``, e.g.
        ``("nodes", "local")`` of a 2-D mesh, or the worker axis of the shard_map lifting on
        a two-level mesh (``lifting.nodes=m``); reduce-scatter inside the node, all-reduce
        across nodes, all-gather inside the node (same result; no ``faults``, no backups).

    Returns:
      An ``optax.GradientTransformation``.
    """
    checks.one_of("op", op, ("mean", "sum"))
    faults = network_faults("faults", faults)
    backup = checks.integer("backup_workers", backup_workers, minimum=0)
    if backup and (op != "mean" or faults is not None):
        raise checks.InvalidArgument(
            "backup_workers", "work with op='mean' and no faults (they drop the latest workers)"
        )
    if hierarchical:
        if faults is not None or backup:
            raise checks.InvalidArgument(
                "hierarchical", "does not combine with faults or backup_workers"
            )
        if isinstance(axis_name, tuple | list) and len(axis_name) == 2:
            axis_name = tuple(axis_name)
        elif not isinstance(axis_name, str):
            raise checks.InvalidArgument(
                "axis_name",
                "must be the pair (nodes, local), or the worker axis of a two-level mesh, "
                f"with hierarchical=True, got {axis_name!r}",
            )
    if faults is not None:
        return _all_reduce_with_faults(axis_name, op, faults)
    reduce = collectives.mean if op == "mean" else collectives.sum
    if hierarchical:
        reduce = hierarchical_mean if op == "mean" else hierarchical_sum
    if backup:
        reduce = lambda x, axis: collectives.backup_mean(x, backup, axis)  # noqa: E731

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return reduce(updates, axis_name), state

    return optax.GradientTransformation(init_fn, update_fn)


def _masked_mean(xs, mask, op: str = "mean"):
    """``Σ_{j : mask_j} xs_j`` (divided by the count for the mean) over the leading axis of
    every leaf; rows outside ``mask`` are never read."""
    count = jnp.maximum(mask.sum(), 1)

    def one(a):
        m = mask.reshape((-1,) + (1,) * (a.ndim - 1))
        total = jnp.where(m, a, 0).sum(axis=0)
        return (total / count.astype(a.dtype)).astype(a.dtype) if op == "mean" else total

    return jax.tree.map(one, xs)


def _all_reduce_with_faults(axis_name: str, op: str, faults: NetworkFault):
    def init_fn(params):
        del params
        return FaultyAllReduceState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        n, me = collectives.num_workers(axis_name), collectives.worker_index(axis_name)
        faults.check(n)
        t = state.count
        row = faults.delivered_traced(t, n)[me]  # [W]: whose update reaches me
        out = _masked_mean(collectives.all_gather(updates, axis_name), row, op)
        if faults.crashes:
            up = faults.alive_traced(t, n)
            if faults.rejoins:
                if params is None:
                    raise checks.InvalidArgument(
                        "params",
                        "is required by all_reduce(faults=node_crash(..., rejoin_step=...)): "
                        "call update(updates, state, params), the transform after the optimizer",
                    )
                back = rejoining(faults, t, n)
                stayers = row & up & ~back

                def resync(o):
                    target = _masked_mean(collectives.all_gather(params, axis_name), stayers)
                    now = back[me] & stayers.any()
                    shift = lambda a, x, p: jnp.where(now, (x - p + a).astype(a.dtype), a)
                    return jax.tree.map(shift, o, target, params)

                out = cond(back.any(), resync, lambda o: o, out)
            out = jax.tree.map(lambda a: jnp.where(up[me], a, 0), out)
        return collectives.varying(out, axis_name), FaultyAllReduceState(t + 1)

    return optax.GradientTransformation(init_fn, update_fn)
