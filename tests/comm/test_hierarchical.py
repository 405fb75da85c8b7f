"""The hierarchical all-reduce over a (nodes, local) mesh: the mean, and bytes per level."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jdo
from jdo import checks, comm, system

M_NODES, K = 2, 4  # 2 nodes of 4 workers: the 8 test devices
AXES = ("nodes", "local")


@pytest.fixture(scope="module")
def mesh2d():
    return jax.make_mesh((M_NODES, K), AXES, axis_types=(AxisType.Auto,) * 2)


def _on_mesh(fn, mesh):
    """``fn`` per worker over the 2-D mesh: stacked ``[m, k, ...]`` in and out."""
    block = lambda x: jax.tree.map(lambda a: a[None, None], fn(jax.tree.map(lambda a: a[0, 0], x)))
    return jax.jit(jax.shard_map(block, mesh=mesh, in_specs=P(*AXES), out_specs=P(*AXES)))


def _tree(seed=0):
    rng = np.random.default_rng(seed)  # a leaf of 7 values: padded to a multiple of k
    return {
        "w": rng.normal(size=(M_NODES, K, 10, 6)).astype(np.float32),
        "b": rng.normal(size=(M_NODES, K, 7)).astype(np.float32),
    }


def test_equals_the_mean_under_shard_map_and_nested_vmap(mesh2d):
    xs = _tree()
    nested = jax.jit(
        jax.vmap(jax.vmap(comm.hierarchical_mean, axis_name="local"), axis_name="nodes")
    )
    for out in (_on_mesh(comm.hierarchical_mean, mesh2d)(xs), nested(xs)):
        for name, x in xs.items():
            np.testing.assert_allclose(
                out[name], comm.hierarchical_mean_reference(x), rtol=1e-6, atol=1e-6
            )


def test_bytes_per_level_are_the_formulas(mesh2d):
    """From the compiled HLO: inside a node 2(k−1)/k·M (reduce-scatter + all-gather), across
    nodes 2(m−1)/m·M/k (the all-reduce of one block)."""
    d = 1000
    xs = np.ones((M_NODES, K, d), np.float32)
    hlo = _on_mesh(comm.hierarchical_mean, mesh2d).lower(xs).compile().as_text()
    node_of = {int(dev.id): n for n, row in enumerate(mesh2d.devices) for dev in row}
    level = {"inside": 0.0, "across": 0.0}
    for op in comm.hlo_collective_ops(hlo):
        inside = all(len({node_of[i] for i in g}) == 1 for g in op.groups)
        level["inside" if inside else "across"] += system.wire_bytes(op) * op.count
    nbytes = 4 * d
    assert level == pytest.approx({"inside": 2 * 3 / 4 * nbytes, "across": 2 * 1 / 2 * nbytes / 4})
    assert comm.hierarchical_bytes(nbytes, M_NODES, K) == pytest.approx(level)


def test_all_reduce_transform_hierarchical_equals_flat(mesh2d):
    xs = _tree(1)
    flat = jdo.transforms.all_reduce(AXES)
    hier = jdo.transforms.all_reduce(AXES, hierarchical=True)
    run = lambda tx: _on_mesh(lambda g: tx.update(g, tx.init(g))[0], mesh2d)(xs)
    for a, b in zip(jax.tree.leaves(run(flat)), jax.tree.leaves(run(hier)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    summed = jdo.transforms.all_reduce(AXES, op="sum", hierarchical=True)
    np.testing.assert_allclose(
        run(summed)["b"], M_NODES * K * comm.hierarchical_mean_reference(xs["b"]), rtol=1e-5
    )
    assert isinstance(optax.chain(hier, optax.sgd(0.1)), optax.GradientTransformation)


def test_bad_axes_are_refused():
    with pytest.raises(checks.InvalidArgument, match="axis_name"):
        jdo.transforms.all_reduce(("nodes", "local", "x"), hierarchical=True)
    tx = jdo.transforms.all_reduce(hierarchical=True)  # "workers": levels only on a 2-D mesh
    with pytest.raises(checks.InvalidArgument, match="lifting.nodes=m"):
        jax.vmap(lambda g: tx.update(g, tx.init(g))[0], axis_name="workers")(jnp.ones(4))
    with pytest.raises(checks.InvalidArgument, match="hierarchical"):
        jdo.transforms.all_reduce(AXES, hierarchical=True, backup_workers=1)
    with pytest.raises(checks.InvalidArgument, match="axis_name"):
        jax.vmap(lambda x: comm.hierarchical_mean(x, "workers"), axis_name="workers")(jnp.ones(4))
