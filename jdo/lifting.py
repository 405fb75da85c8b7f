"""Lifting a per-worker function to all workers: ``vmap`` (W workers on one device),
``shard_map`` (one worker per device) or ``hybrid`` (k = W/D workers on each of D devices).
All give the same results to float tolerance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

from jdo._axis import WORKERS
from jdo._logical import Realised, realising
from jdo.worker_map import WorkerMap, mapped_lift

# The liftings that bind the worker axis itself (every test runs under both); "hybrid" realises
# it as two physical axes and needs a mesh whose device count divides W.
LIFTINGS = ("vmap", "shard_map")
HYBRID = "hybrid"
ALL_LIFTINGS = (*LIFTINGS, HYBRID)
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


def _two_level(mesh, axis_name: str) -> Realised | None:
    """How a two-level ``(nodes, local)`` mesh (no ``axis_name`` axis, two axes) realises the
    worker axis; None for the 1-D mesh whose axis is ``axis_name``."""
    names = tuple(mesh.axis_names)
    if names == (axis_name,):
        return None
    if len(names) != 2 or axis_name in names:
        raise ValueError(
            f"the shard_map lifting needs a 1-D mesh with axis {axis_name!r} or a two-level "
            f"(nodes, local) mesh (jdo.train.make_mesh(W, nodes=m)), got axes {names}"
        )
    nodes, local = (int(mesh.shape[a]) for a in names)
    return Realised(axis_name, names[0], names[1], nodes, local, mesh_local=True)


def worker_spec(mesh, axis_name: str = WORKERS) -> P:
    """The ``PartitionSpec`` of stacked ``[W, ...]`` per-worker values on ``mesh``: the
    worker axis over the mesh's ``axis_name`` axis, or over both axes of a two-level
    ``(nodes, local)`` mesh."""
    two_level = _two_level(mesh, axis_name) if axis_name not in mesh.axis_names else None
    return P(axis_name) if two_level is None else P(two_level.axes)


def shard_map_workers(
    fn: Callable, mesh, in_axes: InAxes = 0, axis_name: str = WORKERS
) -> Callable:
    """``fn`` (per worker) as a ``shard_map`` over ``mesh``, one worker per device.

    Per-worker arguments (``in_axes`` 0) are stacked ``[W, ...]`` values; each device gets its
    ``[1, ...]`` block and ``fn`` sees the block without that axis. Shared arguments (``None``)
    are replicated. Outputs are stacked ``[W, ...]``.

    ``mesh`` is 1-D (its axis is ``axis_name``) or two-level, ``(nodes, local)`` with m × k
    devices (:func:`jdo.train.make_mesh` with ``nodes=m``): worker ``node·k + local``, and
    ``axis_name`` is a logical axis over both, on which :mod:`jdo.comm`'s collectives run
    over the pair of mesh axes, and :func:`jdo.comm.hierarchical_mean` uses the levels.
    """
    two_level = _two_level(mesh, axis_name)
    spec = P(axis_name) if two_level is None else P(two_level.axes)

    def lifted(*args):
        axes = normalize_in_axes(in_axes, len(args))

        def block(*blocks):
            local = [
                b if a is None else jax.tree.map(lambda x: x[0], b)
                for b, a in zip(blocks, axes, strict=True)
            ]
            if two_level is None:
                return jax.tree.map(lambda x: x[None], fn(*local))
            with realising(two_level):
                return jax.tree.map(lambda x: x[None], fn(*local))

        in_specs = tuple(P() if a is None else spec for a in axes)
        # two-level: jdo's varying() types over the logical axis only, so JAX's varying-axes
        # check cannot follow the values (as under the hybrid lifting)
        mapped = jax.shard_map(
            block, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=two_level is None
        )
        if two_level is None:
            return mapped(*args)
        levels = f"the mesh axes {two_level.axes}"
        return _calling(mapped, args, axis_name, "the two-level shard_map lifting", levels)

    return lifted


def _num_workers(args, axes) -> int:
    sizes = {
        int(leaf.shape[0])
        for arg, a in zip(args, axes, strict=True)
        if a is not None
        for leaf in jax.tree.leaves(arg)
    }
    if len(sizes) != 1:
        raise ValueError(
            "lift(..., 'hybrid') needs per-worker arguments whose leaves all have the same "
            f"leading [W] axis, got sizes {sorted(sizes)}"
        )
    return sizes.pop()


def hybrid_workers(fn: Callable, mesh, in_axes: InAxes = 0, axis_name: str = WORKERS) -> Callable:
    r"""``fn`` (per worker) over W = D·k workers, k on each of the D devices of ``mesh``: a
    ``shard_map`` over the devices with a ``vmap`` over each device's k workers inside
    (worker ``device·k + local``; the hybrid of DrJAX, Rush et al. 2024).

    ``axis_name`` is then a *logical* axis bound by neither map: :mod:`jdo.comm`'s
    collectives (and :mod:`jdo.system.clock`'s) lower themselves to a local part over the k
    workers of a device plus a cross-device part that moves only what crosses devices (see
    :mod:`jdo._logical`): an all-reduce is a local sum and one cross-device all-reduce of one
    worker's value; a gossip ``ppermute`` is a local gather plus a ``ppermute`` of only the
    rows that cross (ring: 2 rows per device). A raw ``jax.lax`` collective on ``axis_name``
    fails with a one-line ``NameError`` naming :mod:`jdo.comm`.

    Arguments and outputs are as for :func:`shard_map_workers` (stacked ``[W, ...]``); D (all
    of ``mesh``'s devices) must divide W.
    """
    devices = np.asarray(mesh.devices).reshape(-1)
    num_devices = devices.size
    device_axis, local_axis = f"{axis_name}_devices", f"{axis_name}_local"
    device_mesh = Mesh(devices, (device_axis,), axis_types=(AxisType.Auto,))

    def lifted(*args):
        axes = normalize_in_axes(in_axes, len(args))
        workers = _num_workers(args, axes)
        if workers % num_devices:
            raise ValueError(
                f"lift(..., 'hybrid') puts W/D workers on each of D devices: the mesh's "
                f"D={num_devices} devices must divide W={workers} workers"
            )
        where = Realised(axis_name, device_axis, local_axis, num_devices, workers // num_devices)

        def block(*blocks):
            with realising(where):
                return jax.vmap(fn, in_axes=axes, axis_name=local_axis)(*blocks)

        in_specs = tuple(P() if a is None else P(device_axis) for a in axes)
        # check_vma=False: a reduction over the vmap axis followed by one over the mesh axis
        # (the local + cross-device all-reduce) fails JAX's varying-axes check (an assertion)
        mapped = jax.shard_map(
            block, mesh=device_mesh, in_specs=in_specs, out_specs=P(device_axis), check_vma=False
        )
        return _calling(mapped, args, axis_name, "lifting='hybrid'", "(devices, local)")

    return lifted


def _calling(mapped: Callable, args, axis_name: str, lifting: str, axes: str):
    """``mapped(*args)``, a raw ``jax.lax`` collective on the logical ``axis_name`` (bound by
    no map) turned into one line naming :mod:`jdo.comm`."""
    try:
        return mapped(*args)
    except NameError as err:
        if f"unbound axis name: {axis_name}" not in str(err):
            raise
        raise NameError(
            f"{lifting} realises the {axis_name!r} axis as {axes}: call jdo.comm's collectives "
            f"(jdo.comm.mean, sum, all_gather, mix, worker_index, ...) instead of jax.lax "
            f"collectives on {axis_name!r}"
        ) from None


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
      lifting: ``"vmap"`` (W workers on one device), ``"shard_map"`` (one worker per device
        of ``mesh``, whose ``axis_name`` axis has size W) or ``"hybrid"`` (W/D workers on
        each of the D devices of ``mesh``; :func:`hybrid_workers`).
      mesh: the device mesh, for ``"shard_map"`` and ``"hybrid"``.
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
    if lifting == HYBRID:
        if mesh is None:
            raise ValueError("lift(..., 'hybrid') needs a mesh (see jdo.train.make_mesh)")
        return hybrid_workers(fn, mesh, in_axes, axis_name)
    raise ValueError(f"unknown lifting {lifting!r}; allowed: {', '.join(ALL_LIFTINGS)}")
