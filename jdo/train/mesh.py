"""Device meshes and the liftings (vmap, shard_map) a config chooses by ``_target_``."""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import AxisType, Mesh

from jdo import checks
from jdo._axis import LOCAL, NODES, WORKERS
from jdo.worker_map import WorkerMap


def make_mesh(num_workers: int, axis_name: str = WORKERS, devices=None, nodes: int = 1) -> Mesh:
    """A mesh of ``num_workers`` devices (the first ones), one worker per device: 1-D with axis
    ``axis_name``, or with ``nodes=m`` (m > 1) two-level, ``(nodes, local)`` of shape
    ``(m, num_workers / m)`` (worker ``node·k + local``; :func:`jdo.lifting.shard_map_workers`).

    Axis type Auto, so a jitted ``shard_map`` also accepts inputs that are not yet sharded.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not 1 <= num_workers <= len(devices):
        raise ValueError(
            f"the shard_map lifting puts one worker per device: workers={num_workers} needs "
            f"1..{len(devices)} (devices available: {len(devices)}); use lifting=vmap instead"
        )
    checks.positive_int("nodes", nodes)
    if nodes == 1:
        shape, names = (num_workers,), (axis_name,)
    elif num_workers % nodes:
        raise checks.InvalidArgument(
            "nodes", f"must divide the {num_workers} workers (one per device), got {nodes}"
        )
    else:
        shape, names = (nodes, num_workers // nodes), (NODES, LOCAL)
    types = (AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, names, axis_types=types, devices=devices[:num_workers])


@dataclasses.dataclass(frozen=True)
class Lifting:
    """How the per-worker step is lifted: ``name`` is ``"vmap"`` (the worker axis spread over
    ``devices`` devices, ``workers / devices`` per device), ``"shard_map"`` (one worker per
    device) or ``"hybrid"`` (``workers / devices`` per device, shard_map × vmap). ``chunk`` and
    ``map``: how the vmap lifting evaluates the per-worker compute
    (:class:`jdo.worker_map.WorkerMap`). ``nodes``: the shard_map lifting's two-level mesh
    (m nodes × W/m devices; 1: a 1-D mesh)."""

    name: str
    devices: int = 1
    chunk: int | None = None
    map: str = "vmap"
    nodes: int = 1


def vmap_lifting(devices: int = 1, chunk: int | None = None, map: str = "vmap") -> Lifting:  # noqa: A002
    """All workers with ``jax.vmap``, spread over ``devices`` devices (config: lifting=vmap);
    the per-worker compute ``chunk`` workers at a time or mapped by ``map``
    (``vmap | scan | auto``; see :mod:`jdo.worker_map`), on one device."""
    checks.positive_int("devices", devices)
    policy = WorkerMap(map, chunk)
    if devices > 1 and not policy.plain:
        raise checks.InvalidArgument(
            "chunk" if chunk is not None else "map",
            f"chunks are evaluated one after another on one device: use devices=1 (got "
            f"{devices}), or the hybrid lifting to spread workers over devices",
        )
    return Lifting("vmap", devices, chunk, map)


def shard_map_lifting(nodes: int = 1) -> Lifting:
    """One worker per device with ``jax.shard_map`` (config: lifting=shard_map); with
    ``nodes=m > 1`` on a two-level ``(nodes, local)`` mesh of m nodes × W/m devices, where
    :func:`jdo.comm.hierarchical_mean` (and ``hierarchical_local_sgd``) use the levels
    (config: lifting=shard_map lifting.nodes=m)."""
    return Lifting("shard_map", 1, nodes=checks.positive_int("nodes", nodes))


def hybrid_lifting(devices: int = 1) -> Lifting:
    """``workers / devices`` workers on each of ``devices`` devices: ``shard_map`` over the
    devices, ``vmap`` inside, collectives lowered to what crosses devices
    (:func:`jdo.lifting.hybrid_workers`; config: lifting=hybrid lifting.devices=D)."""
    return Lifting("hybrid", checks.positive_int("devices", devices))


def lifting_of(node) -> Lifting:
    """The :class:`Lifting` a ``lifting`` config node's ``_target_`` makes."""
    import hydra.utils

    return hydra.utils.instantiate(node)
