r"""Hierarchical all-reduce over a two-level worker axis ``(nodes, local)``, with a reference.

A real cluster is two-level: ``k`` workers in a node share fast links, the ``m`` nodes talk
over slower ones. The hierarchical all-reduce of Horovod (Sergeev & Del Balso 2018) and NCCL
moves most bytes inside the nodes:

1. reduce-scatter inside the node: worker ``l`` of a node holds the node's sum of block ``l``
   (``1/k`` of the buffer);
2. all-reduce across the nodes of that block (``m`` workers, ``M/k`` bytes each);
3. all-gather inside the node: every worker holds the whole sum.

With a buffer of ``M`` bytes and ring algorithms, one worker sends ``2(k−1)/k · M`` inside its
node (steps 1 and 3) and ``2(m−1)/m · M/k`` across nodes (step 2), against ``2(W−1)/W · M``
for a flat ring all-reduce over all ``W = m·k`` workers, most of it across the slow links.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks
from jdo._axis import LOCAL, NODES
from jdo._logical import levels
from jdo.system import clock


def _axes(axis_name) -> tuple[str, str]:
    if isinstance(axis_name, str) and (two_level := levels(axis_name)) is not None:
        return two_level  # the worker axis of the two-level shard_map lifting
    if (
        not isinstance(axis_name, tuple | list)
        or len(axis_name) != 2
        or not all(isinstance(a, str) for a in axis_name)
    ):
        raise checks.InvalidArgument(
            "axis_name",
            "must name the two levels (nodes, local) of a 2-D worker mesh, e.g. "
            "('nodes', 'local'), or be the worker axis of the shard_map lifting on one "
            f"(lifting=shard_map lifting.nodes=m), got {axis_name!r}",
        )
    return axis_name[0], axis_name[1]


def _leaf_sum(a, nodes: str, local: str, k: int):
    flat = a.reshape(-1)
    pad = -flat.shape[0] % k
    flat = jnp.pad(flat, (0, pad))
    block = jax.lax.psum_scatter(flat, local, scatter_dimension=0, tiled=True)  # 1. [M/k]
    block = jax.lax.psum(block, nodes)  # 2. across the nodes
    whole = jax.lax.all_gather(block, local, tiled=True)  # 3. [M]
    return whole[: a.size].reshape(a.shape)


def hierarchical_sum(x, axis_name=(NODES, LOCAL)):
    """``Σ_j x_j`` over all workers of the 2-D axis ``axis_name = (nodes, local)`` by the
    hierarchical all-reduce (module docstring): reduce-scatter inside the node, all-reduce
    across nodes, all-gather inside the node. Each leaf travels flattened (padded to a
    multiple of the node size). ``axis_name`` may also be the worker axis of the two-level
    shard_map lifting (``lifting.nodes=m``), whose levels are then used, and whose clock
    prices one all-reduce as its cluster's ``collective`` does (``hierarchical``: these
    three phases on the intra- and inter-node links)."""
    nodes, local = _axes(axis_name)
    k = jax.lax.axis_size(local)
    nbytes = clock.tree_bytes(x)
    if isinstance(axis_name, str):
        clock.barrier("all-reduce", nbytes, axis_name)
    else:
        clock.barrier("reduce-scatter", nbytes, local)
        clock.barrier("all-reduce", -(-nbytes // k), nodes)
        clock.barrier("all-gather", nbytes, local)
    return jax.tree.map(lambda a: _leaf_sum(a, nodes, local, k), x)


def hierarchical_mean(x, axis_name=(NODES, LOCAL)):
    r"""All-reduce mean of a pytree over a two-level worker axis ``(nodes, local)``: every
    worker gets :math:`\frac{1}{mk} \sum_{j} x_j`, by reduce-scatter inside the node,
    all-reduce across nodes, all-gather inside the node (Horovod's and NCCL's hierarchical
    all-reduce; see the module docstring for the bytes per level).

    Args:
      x: this worker's pytree.
      axis_name: ``(nodes, local)``: the axis across nodes (m) and the one inside a node (k),
        e.g. the two axes of ``jax.make_mesh((m, k), ("nodes", "local"))`` under
        ``jax.shard_map``, or two nested ``jax.vmap`` axes; or the worker axis (``"workers"``)
        of the shard_map lifting on a two-level mesh (``jdo.train.make_mesh(W, nodes=m)``).
    """
    nodes, local = _axes(axis_name)
    n = jax.lax.axis_size(nodes) * jax.lax.axis_size(local)
    return jax.tree.map(lambda a: a / n, hierarchical_sum(x, axis_name))


def hierarchical_bytes(nbytes: float, nodes: int, local: int) -> dict[str, float]:
    """Wire bytes one worker sends per level in one hierarchical all-reduce of ``nbytes``
    over ``nodes × local`` workers (ring algorithms): ``{"inside": 2(k−1)/k·M, "across":
    2(m−1)/m·M/k}``."""
    m, k = checks.positive_int("nodes", nodes), checks.positive_int("local", local)
    return {"inside": 2 * (k - 1) / k * nbytes, "across": 2 * (m - 1) / m * nbytes / k}


def hierarchical_mean_reference(xs: np.ndarray) -> np.ndarray:
    """Dense reference for :func:`hierarchical_mean` on stacked ``xs: [m, k, ...]``: every
    worker holds the mean over all ``m·k``."""
    xs = np.asarray(xs)
    return np.broadcast_to(xs.mean(axis=(0, 1), keepdims=True), xs.shape).copy()
