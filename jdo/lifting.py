"""Lifting a per-worker function to all workers: ``vmap`` (W workers on one device) or
``shard_map`` (one worker per device). Both give the same results to float tolerance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

from jdo._axis import WORKERS
from jdo.worker_map import WorkerMap, mapped_lift

LIFTINGS = ("vmap", "shard_map")
InAxes = int | None | Sequence[int | None]


def normalize_in_axes(in_axes: InAxes, nargs: int) -> tuple[int | None, ...]:
    """``in_axes`` as one entry per argument (each ``0``: per worker, or ``None``: shared);
    raises ``ValueError`` on a wrong count or entry."""
    axes = tuple(in_axes) if isinstance(in_axes, Sequence) else (in_axes,) * nargs
    if len(axes) != nargs:
        raise ValueError(f"in_axes has {len(axes)} entries for {nargs} arguments")
    if any(a not in (0, None) for a in axes):
        raise ValueError(f"in_axes entries must be 0 (per worker) or None (shared), got {axes}")
    return axes


def shard_map_workers(
    fn: Callable, mesh, in_axes: InAxes = 0, axis_name: str = WORKERS
) -> Callable:
    """``fn`` (per worker) as a ``shard_map`` over ``mesh[axis_name]``, one worker per device.

    Per-worker arguments (``in_axes`` 0) are stacked ``[W, ...]`` values; each device gets its
    ``[1, ...]`` block and ``fn`` sees the block without that axis. Shared arguments (``None``)
    are replicated. Outputs are stacked ``[W, ...]``.
    """

    def lifted(*args):
        axes = normalize_in_axes(in_axes, len(args))

        def block(*blocks):
            local = [
                b if a is None else jax.tree.map(lambda x: x[0], b)
                for b, a in zip(blocks, axes, strict=True)
            ]
            return jax.tree.map(lambda x: x[None], fn(*local))

        in_specs = tuple(P() if a is None else P(axis_name) for a in axes)
        return jax.shard_map(block, mesh=mesh, in_specs=in_specs, out_specs=P(axis_name))(*args)

    return lifted


def lift(
    fn: Callable,
    lifting: str = "vmap",
    *,
    mesh=None,
    in_axes: InAxes = 0,
    axis_name: str = WORKERS,
    chunk: int | None = None,
    map: str = "vmap",  # noqa: A002 - the config key lifting.map
) -> Callable:
    """Lifts the per-worker ``fn`` to stacked ``[W, ...]`` arguments and outputs.

    Args:
      fn: written for one worker; communicates only through collectives on ``axis_name``.
      lifting: ``"vmap"`` (W workers on one device) or ``"shard_map"`` (one worker per device
        of ``mesh``, whose ``axis_name`` axis has size W).
      mesh: the device mesh, for ``"shard_map"``.
      in_axes: per argument, ``0`` for per-worker (stacked) values, ``None`` for shared ones.
      axis_name: the workers' named axis.
      chunk, map: for ``"vmap"``, how the compute ``fn`` marks with
        :func:`jdo.worker_map.per_worker_compute` is evaluated: ``chunk=c`` workers at a
        time, ``map="scan"`` one at a time, ``map="auto"`` (see :mod:`jdo.worker_map`);
        collectives always see all W workers.

    Returns:
      A function of the stacked arguments; wrap it in ``jax.jit``.
    """
    if lifting == "vmap":
        vmapped = jax.vmap(fn, in_axes=in_axes, axis_name=axis_name)
        policy = WorkerMap(map, chunk)
        return vmapped if policy.plain else mapped_lift(vmapped, policy)
    if chunk is not None or map != "vmap":
        raise ValueError(f"chunk and map are options of the vmap lifting, not {lifting!r}")
    if lifting == "shard_map":
        if mesh is None:
            raise ValueError("lift(..., 'shard_map') needs a mesh (see jdo.train.make_mesh)")
        return shard_map_workers(fn, mesh, in_axes, axis_name)
    raise ValueError(f"unknown lifting {lifting!r}; allowed: {', '.join(LIFTINGS)}")
