"""A sharded parameter server inside SPMD: each worker serves 1/W of the parameters and owns
that shard's optimizer state (ZeRO stage 1)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jdo import checks
from jdo._axis import WORKERS
from jdo.comm import collectives


class ShardedState(NamedTuple):
    inner: optax.OptState  # the optimizer's state for this worker's shard only (arrays [S])


def shard_size(num_params: int, num_workers: int) -> int:
    """Entries of one worker's shard: ``S = ⌈P / W⌉`` (the flat vector is padded to ``W·S``)."""
    return -(-int(num_params) // int(num_workers))


def _padded(flat: jax.Array, n: int) -> jax.Array:
    """``flat`` with zeros appended up to ``n · shard_size``: ``[W·S]``."""
    return jnp.pad(flat, (0, n * shard_size(flat.size, n) - flat.size))


def own_shard(tree, axis_name: str = WORKERS) -> jax.Array:
    """This worker's shard of the flattened, zero-padded ``tree``: entries ``[i·S, (i+1)·S)``
    of ``ravel(tree)`` for worker ``i`` on ``axis_name`` (``[S]``)."""
    flat, _ = ravel_pytree(tree)
    n = collectives.num_workers(axis_name)
    size = shard_size(flat.size, n)
    start = collectives.worker_index(axis_name) * size
    return jax.lax.dynamic_slice_in_dim(_padded(flat, n), start, size)


def sharded_update(
    optimizer: optax.GradientTransformation, axis_name: str = WORKERS
) -> optax.GradientTransformation:
    r"""``optimizer`` run as a synchronous sharded parameter server over the workers.

    The parameters are flattened into one vector of ``P`` entries, padded with zeros to
    ``W·S`` (``S = ⌈P/W⌉``; uneven counts are padded, never refused) and cut into W shards;
    worker ``i`` serves shard ``i`` and keeps ``optimizer``'s state for it alone, so every
    optimizer-state array a worker holds has ``S`` entries — 1/W of the replicated state.
    One update, with :math:`g_j` worker j's gradient and :math:`[\cdot]_i` shard i:

    .. math:: \bar g_{[i]} = \frac{1}{W} \sum_{j=1}^{W} [g_j]_i \;(\text{reduce-scatter}),\quad
              (u_{[i]}, s_i) \leftarrow \mathrm{opt}(\bar g_{[i]}, s_i, [x]_i),\quad
              u = (u_{[1]}, \dots, u_{[W]}) \;(\text{all-gather}).

    Every worker gets the same update ``u`` (the transform's output), so ``x + u`` leaves the
    workers identical. For an element-wise optimizer (SGD, momentum, Adam, AdamW, RMSProp,
    ...) this is the optimizer on the mean gradient, i.e. all-reduce SGD
    (:func:`jdo.transforms.all_reduce` then ``optimizer``), with half its wire bytes in each
    of the two collectives (a ring all-reduce *is* a reduce-scatter then an all-gather). An
    optimizer that reads whole tensors or the tree's structure (LARS/LAMB trust ratios,
    Adafactor's factored moments, global-norm clipping, ``optax.masked``) sees a flat shard
    instead. ``init`` and ``update`` must run under a lifting that binds ``axis_name`` (the
    shard index is ``jax.lax.axis_index``).

    This is the parameter-server architecture of Li et al. 2014 ("Scaling Distributed Machine
    Learning with the Parameter Server", OSDI) with the servers co-located on the workers and
    synchronous, as BytePS runs its summation servers (Jiang et al. 2020, "A Unified
    Architecture for Accelerating Distributed DNN Training in Heterogeneous GPU/CPU
    Clusters", OSDI), and ZeRO stage 1's optimizer-state partitioning (Rajbhandari et al.
    2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC).

    Example::

        tx = jdo.transforms.sharded_update(optax.adam(1e-3))
        # inside jax.vmap(..., axis_name="workers") or jax.shard_map over "workers":
        updates, state = tx.update(grads, state, params)

    Args:
      optimizer: an optax transformation; it sees one flat ``[S]`` shard.
      axis_name: the named axis the workers live on.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`ShardedState`; ``update``
      takes the raw gradients and ``params`` (passed to ``optimizer``, e.g. for weight decay).
    """
    checks.optimizer("optimizer", optimizer)

    def init_fn(params):
        return ShardedState(optimizer.init(own_shard(params, axis_name)))

    def update_fn(updates, state, params=None):
        flat, unravel = ravel_pytree(updates)
        n = collectives.num_workers(axis_name)
        grad = collectives.reduce_scatter(_padded(flat, n), axis_name)  # [S]: my shard's mean
        mine = None if params is None else own_shard(params, axis_name)
        step, inner = optimizer.update(grad, state.inner, mine)
        gathered = collectives.all_gather(step, axis_name)  # [W, S]: every shard's update
        return unravel(gathered.reshape(-1)[: flat.size]), ShardedState(inner)

    return optax.GradientTransformation(init_fn, update_fn)
