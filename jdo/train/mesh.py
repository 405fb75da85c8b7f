"""Device meshes for the shard_map lifting."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

from jdo._axis import WORKERS


def make_mesh(num_workers: int, axis_name: str = WORKERS, devices=None) -> Mesh:
    """A 1-D mesh of ``num_workers`` devices (the first ones), one worker per device.

    Axis type Auto, so a jitted ``shard_map`` also accepts inputs that are not yet sharded.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not 1 <= num_workers <= len(devices):
        raise ValueError(
            f"the shard_map lifting puts one worker per device: workers={num_workers} needs "
            f"1..{len(devices)} (devices available: {len(devices)}); use lifting=vmap instead"
        )
    return jax.make_mesh(
        (num_workers,), (axis_name,), axis_types=(AxisType.Auto,), devices=devices[:num_workers]
    )
