"""jdo.system.estimate on shard_map'd steps over 8 CPU devices, against hand-computed formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jdo.system as system

RING = [(i, (i + 1) % 8) for i in range(8)]
A_I, B_I, A_E, B_E = 2e-6, 3e11, 9e-6, 4e10


def close(a, b):
    assert math.isclose(a, b, rel_tol=1e-12), (a, b)


def _step(a, g, p):  # per worker: a f32[1, 1000], g f32[1, 16], p f32[1, 32]
    summed = jax.lax.psum(a, "workers")  # all-reduce of 4000 B
    gathered = jax.lax.all_gather(g, "workers", tiled=True)  # output f32[8, 16]: 512 B
    body = lambda c, _: (jax.lax.ppermute(c, "workers", RING), None)
    permuted, _ = jax.lax.scan(body, p, None, length=3)  # 3 permutes of 128 B
    return summed * 2 + gathered.sum() + permuted.sum()


@pytest.fixture(scope="module")
def flat_step():
    mesh = jax.make_mesh((8,), ("workers",), axis_types=(AxisType.Auto,))
    spec = P("workers")
    step = jax.jit(jax.shard_map(_step, mesh=mesh, in_specs=spec, out_specs=spec))
    args = (
        jax.ShapeDtypeStruct((8, 1000), jnp.float32),
        jax.ShapeDtypeStruct((8, 16), jnp.float32),
        jax.ShapeDtypeStruct((8, 32), jnp.float32),
    )
    return step, args


def test_ring_on_one_link(flat_step):
    cluster = system.Cluster(inter=system.Link(A_E, B_E), compute=system.fixed(0.01))
    est = system.estimate(*flat_step, cluster)
    ops = sorted((o.kind, o.nbytes, o.group_size, o.count) for o in est.ops)
    assert ops == [
        ("all-gather", 512, 8, 1),
        ("all-reduce", 4000, 8, 1),
        ("collective-permute", 128, 8, 3),
    ]
    comm = (
        (14 * A_E + 2 * 7 / 8 * 4000 / B_E) + (7 * A_E + 7 / 8 * 512 / B_E) + 3 * (A_E + 128 / B_E)
    )
    close(est.comm_s, comm)
    assert est.compute_s == 0.01 and est.workers == 8
    close(est.total_s, 0.01 + comm)
    close(est.wire_bytes, 2 * 7 / 8 * 4000 + 7 * 64 + 3 * 128)


def test_two_level_cluster(flat_step):
    kw = dict(workers_per_node=4, intra=system.Link(A_I, B_I), inter=system.Link(A_E, B_E))
    ring = system.estimate(*flat_step, system.Cluster(**kw))
    # the 8-worker groups span both nodes: inter; the ring permute crosses nodes at 3->4, 7->0
    close(
        ring.comm_s,
        (14 * A_E + 2 * 7 / 8 * 4000 / B_E) + (7 * A_E + 7 / 8 * 512 / B_E) + 3 * (A_E + 128 / B_E),
    )
    hier = system.estimate(*flat_step, system.Cluster(collective="hierarchical", **kw))
    k, m = 4, 2
    all_reduce = (
        2 * ((k - 1) * A_I + (k - 1) / k * 4000 / B_I)
        + 2 * (m - 1) * A_E
        + 2 * (m - 1) / m * (4000 / k) / B_E
    )
    all_gather = (
        (m - 1) * A_E + (m - 1) / m * (512 / k) / B_E + (k - 1) * A_I + (k - 1) / k * 512 / B_I
    )
    close(hier.comm_s, all_reduce + all_gather + 3 * (A_E + 128 / B_E))


def _grid_step(x):  # per worker f32[1, 250]: 1000 B
    local = jax.lax.psum(x, "local")  # groups {0..3}, {4..7}: inside a node
    across = jax.lax.psum(x * 3, "node")  # groups {0,4}, {1,5}, ...: one worker per node
    return local + across


def test_group_sizes_and_layout_come_from_the_hlo():
    mesh = jax.make_mesh((2, 4), ("node", "local"), axis_types=(AxisType.Auto,) * 2)
    spec = P(("node", "local"))
    step = jax.jit(jax.shard_map(_grid_step, mesh=mesh, in_specs=spec, out_specs=spec))
    cluster = system.Cluster(
        workers_per_node=4, intra=system.Link(A_I, B_I), inter=system.Link(A_E, B_E)
    )
    est = system.estimate(step, (np.ones((8, 250), np.float32),), cluster)
    assert sorted((o.kind, o.nbytes, o.group_size) for o in est.ops) == [
        ("all-reduce", 1000, 2),
        ("all-reduce", 1000, 4),
    ]
    intra_ring = 6 * A_I + 2 * 3 / 4 * 1000 / B_I
    inter_ring = 2 * A_E + 2 * 1 / 2 * 1000 / B_E  # 2 workers, each on its own node
    close(est.comm_s, intra_ring + inter_ring)


def test_flops_and_measured_compute(flat_step):
    step, args = flat_step
    flops = step.lower(*args).compile().cost_analysis()["flops"]
    assert flops > 0
    est = system.estimate(
        step, args, system.Cluster(inter=system.Link(0, 1), compute=system.flops(1e9, 0.5))
    )
    assert est.profile.flops == flops
    close(est.compute_s, flops / 5e8)
    slow = system.Cluster(inter=system.Link(0, 1), compute=system.measured(2.0), speeds=[1.0, 0.5])
    est = system.estimate(step, args, slow, repeats=3)
    assert est.profile.seconds > 0
    close(est.compute_s, est.profile.seconds / 2.0 / 0.5)  # the slowest worker
