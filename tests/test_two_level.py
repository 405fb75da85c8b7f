"""The shard_map lifting on a two-level (nodes, local) mesh: equal to vmap, hierarchical
collectives where the algorithm asks for them (checked in the compiled HLO), the clock of a
node's all-reduce, the runner and its config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import comm, system
from jdo.system import Cluster, Link, clock
from jdo.train import make_mesh, run
from tests.conftest import compose_cfg
from tests.test_hybrid import assert_equal, problem, run_steps, train_steps

W = 8


@pytest.fixture(scope="module", params=[2, 4], ids=["2x4", "4x2"])
def mesh2(request):
    return make_mesh(W, nodes=request.param)


def test_make_mesh_names_the_levels():
    mesh = make_mesh(W, nodes=2)
    assert mesh.axis_names == ("nodes", "local") and dict(mesh.shape) == {"nodes": 2, "local": 4}
    with pytest.raises(jdo.checks.InvalidArgument, match="nodes must divide the 8 workers"):
        make_mesh(W, nodes=3)


@pytest.mark.parametrize("name", ["allreduce_sgd", "dpsgd_ring", "dpsgd_one_peer", "choco_sgd"])
def test_two_level_shard_map_equals_vmap(name, mesh2):
    assert_equal(train_steps(name, W, "vmap", None), train_steps(name, W, "shard_map", mesh2))


def _hierarchical_local_sgd(group_size):
    loss_fn, params, batch = problem(W)
    algo = jdo.algorithms.local_sgd(
        loss_fn, optax.sgd(0.1), every=4, group_size=group_size, group_every=2
    )
    return algo, params, batch


def _run_local_sgd(group_size, lifting, mesh, steps=8):
    algo = _hierarchical_local_sgd(group_size)[0]
    return run_steps(algo, W, lifting, mesh, steps)


def _local_sgd_reference(group_size, steps=8):
    """numpy: SGD per worker on the softmax regression, group means every 2 steps, the global
    mean every 4."""
    loss_fn, params, batch = problem(W)
    grad = jax.jit(jax.vmap(jax.grad(lambda p, b: loss_fn(p, b, None)[0])))
    w = np.broadcast_to(np.asarray(params["w"]), (W, *params["w"].shape)).copy()
    for t in range(1, steps + 1):
        w = w - 0.1 * np.asarray(grad({"w": jnp.asarray(w)}, batch)["w"])
        if t % 4 == 0:
            w[:] = w.mean(0)
        elif t % 2 == 0:
            groups = w.reshape(W // group_size, group_size, *w.shape[1:])
            w = np.repeat(groups.mean(1), group_size, axis=0)
    return w


def test_hierarchical_local_sgd_equals_numpy_on_every_lifting(mesh2):
    """Nodes of k = the group: the group mean is one all-reduce inside the node, the global
    mean the hierarchical all-reduce; the same numbers as vmap (ppermutes) and numpy."""
    k = W // int(mesh2.shape["nodes"])
    expected = _local_sgd_reference(k)
    for lifting, mesh in (("vmap", None), ("shard_map", mesh2), ("shard_map", make_mesh(W))):
        got = np.asarray(_run_local_sgd(k, lifting, mesh)["w"])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=lifting)


def _levels_of(hlo, mesh):
    """Per collective kind: the wire bytes inside nodes and across, from compiled HLO."""
    node_of = {int(d.id): n for n, row in enumerate(np.asarray(mesh.devices)) for d in row}
    out = {}
    for op in comm.hlo_collective_ops(hlo):
        groups = op.groups or [list(node_of)]
        inside = all(len({node_of[i] for i in g}) == 1 for g in groups)
        key = (op.kind, "inside" if inside else "across")
        out[key] = out.get(key, 0.0) + system.wire_bytes(op) * op.count
    return out


def _group_hlo(fn, mesh):
    xs = np.ones((W, 24), np.float32)
    return jax.jit(jdo.lift(fn, "shard_map", mesh=mesh)).lower(xs).compile().as_text()


def test_node_group_mean_is_one_all_reduce_inside_the_node():
    """``group_mean`` over nodes of k on the two-level mesh: one all-reduce per node,
    2(k−1)/k·M per worker; on the 1-D mesh the same mean is k − 1 ppermutes of M."""
    k, m = 4, 4 * 24
    two, one = make_mesh(W, nodes=2), make_mesh(W)
    levels = _levels_of(_group_hlo(lambda x: comm.group_mean(x, k), two), two)
    assert levels == pytest.approx({("all-reduce", "inside"): 2 * (k - 1) / k * m})
    flat = comm.hlo_collective_ops(_group_hlo(lambda x: comm.group_mean(x, k), one))
    assert {op.kind for op in flat} == {"collective-permute"}
    assert sum(system.wire_bytes(op) * op.count for op in flat) == (k - 1) * m


def test_hierarchical_local_sgd_compiles_to_node_collectives():
    """2 nodes of 4: no collective-permute; the global mean (the costlier branch) is
    reduce-scatter + all-gather inside the node, 2(k−1)/k·M, and an all-reduce of M/k
    across, 2(m−1)/m·M/k; the group mean is an all-reduce over each node's devices."""
    mesh = make_mesh(W, nodes=2)
    algo, params, batch = _hierarchical_local_sgd(4)
    lift = functools.partial(jdo.lift, lifting="shard_map", mesh=mesh)
    state = jax.jit(lift(algo.init, in_axes=(None, 0)))(
        params, jax.random.split(jax.random.key(1), W)
    )
    step = jax.jit(lift(algo.step, in_axes=(0, 0, None)))
    hlo = step.lower(state, batch, jax.random.key(0)).compile().as_text()
    m = 4 * 8 * 3  # the float32 [8, 3] weight
    levels = _levels_of(hlo, mesh)
    inside = sum(v for (kind, where), v in levels.items() if where == "inside")
    across = sum(v for (kind, where), v in levels.items() if where == "across")
    assert (inside, across) == pytest.approx(tuple(comm.hierarchical_bytes(m, 2, 4).values()))
    assert "collective-permute" not in hlo
    assert "replica_groups={{0,1,2,3},{4,5,6,7}}" in hlo.replace(" ", "")


def test_hierarchical_mean_on_the_worker_axis_and_raw_lax_fails(mesh2):
    """On the two-level lifting ``hierarchical_mean`` takes the levels' names or the worker
    axis; on a 1-D mesh the worker axis has no levels: one line naming the fix."""
    xs = np.random.default_rng(0).normal(size=(W, 7)).astype(np.float32)
    on_workers = lambda x: comm.hierarchical_mean(x, "workers")
    for fn in (comm.hierarchical_mean, on_workers, comm.mean):
        out = jax.jit(jdo.lift(fn, "shard_map", mesh=mesh2))(xs)
        np.testing.assert_allclose(out, np.broadcast_to(xs.mean(0), xs.shape), rtol=1e-6)
    index = jax.jit(jdo.lift(lambda x: comm.worker_index() + 0 * x[0], "shard_map", mesh=mesh2))
    np.testing.assert_array_equal(index(xs), np.arange(W))
    flat = jdo.lift(on_workers, "shard_map", mesh=make_mesh(W))
    with pytest.raises(jdo.checks.InvalidArgument, match="lifting.nodes=m"):
        jax.jit(flat)(xs)
    raw = jdo.lift(lambda x: jax.lax.psum(x, "workers"), "shard_map", mesh=mesh2)
    with pytest.raises(NameError, match="call jdo.comm's collectives"):
        jax.jit(raw)(xs)


INTRA, INTER = Link(2e-4, 2e5), Link(1e-3, 1e4)


def test_a_nodes_all_reduce_waits_for_its_node_only(mesh2):
    """clock.group_barrier: every clock of a node becomes the node's latest plus an all-reduce
    over its k workers on the intra-node link (ring: 2(k−1)α + 2(k−1)/k·S/B), under vmap and
    the 1-D mesh; ``group_mean`` on the two-level mesh is priced so."""
    k = W // int(mesh2.shape["nodes"])
    cluster = Cluster(workers_per_node=k, nodes=W // k, intra=INTRA, inter=INTER)
    base = 0.01 * (1 + np.arange(W))
    values = np.arange(W * 4, dtype=np.float32).reshape(W, 4)
    expected_t = np.zeros(W)
    cost = 2 * (k - 1) * INTRA.latency_s + 2 * (k - 1) / k * 16 / INTRA.bandwidth_Bps
    for _ in range(3):
        ready = expected_t + base
        expected_t = np.repeat(ready.reshape(-1, k).max(1), k) + cost

    def barrier(v):
        clock.group_barrier("all-reduce", 16, k)
        return v

    group_mean = lambda v: comm.group_mean(v, k)
    for fn, lifting, mesh in (
        (barrier, "vmap", None),
        (barrier, "shard_map", make_mesh(W)),
        (group_mean, "shard_map", mesh2),
    ):
        lift = functools.partial(jdo.lift, lifting=lifting, mesh=mesh)
        lifted = jax.jit(lift(clock.clocked(fn, cluster), in_axes=(0, 0)))
        state = jax.jit(lift(lambda _: clock.start(base)))(jnp.arange(W))
        for _ in range(3):
            out, state = lifted(state, jnp.asarray(values))
        np.testing.assert_allclose(clock.seconds(state.now), expected_t, rtol=1e-6)
    groups = values.reshape(-1, k, 4).mean(1)
    np.testing.assert_allclose(np.asarray(out), np.repeat(groups, k, 0), rtol=1e-6)


def test_runner_two_level_equals_vmap_and_counts_node_bytes(tmp_path):
    common = (
        "task=logistic",
        "workers=8",
        "algorithm=local_sgd",
        "algorithm.every=4",
        "algorithm.group_size=4",
        "algorithm.group_every=2",
        "trainer.steps=8",
        "trainer.log_every=4",
        "trainer.eval_every=8",
        "trainer.progress=false",
        "checkpoint=none",
    )
    two = run(compose_cfg(*common, "lifting=shard_map", "lifting.nodes=2"), str(tmp_path / "2"))
    flat = run(compose_cfg(*common, "lifting=vmap"), str(tmp_path / "v"))
    assert_equal(*(jax.device_get(s["state"].params) for s in (two, flat)))
    # the group mean as a node all-reduce: 2(k-1)/k M instead of (k-1) M
    assert two["bytes/step"] < flat["bytes/step"]


def test_all_gather_is_in_worker_order(mesh2):
    xs = np.arange(W * 3, dtype=np.float32).reshape(W, 3)
    out = jax.jit(jdo.lift(comm.all_gather, "shard_map", mesh=mesh2))(xs)
    np.testing.assert_array_equal(out, comm.all_gather_reference(xs))


def test_sharded_server_moves_its_shards_by_level():
    """The sharded parameter server on 2 nodes of 4: its reduce-scatter and all-gather are
    two-level, each sending (k−1)/k·M inside the node and (m−1)/m·M/k across (M: the padded
    parameter vector), the hierarchical all-reduce's bytes split in two."""
    mesh = make_mesh(W, nodes=2)
    tx = jdo.transforms.sharded_update(optax.sgd(0.1))
    params = {"w": np.ones((W, 64), np.float32)}
    state = jax.jit(jdo.lift(tx.init, "shard_map", mesh=mesh))(params)
    update = jax.jit(jdo.lift(lambda g, s, p: tx.update(g, s, p)[0], "shard_map", mesh=mesh))
    hlo = update.lower(params, state, params).compile().as_text()
    levels = _levels_of(hlo, mesh)
    m = 4 * 64
    assert set(levels) == {
        (kind, where) for kind in ("reduce-scatter", "all-gather") for where in ("inside", "across")
    }, levels
    for kind in ("reduce-scatter", "all-gather"):
        assert levels[kind, "inside"] == pytest.approx(3 / 4 * m), levels
        assert levels[kind, "across"] == pytest.approx(1 / 2 * m / 4), levels


def test_a_bad_nodes_value_names_its_key():
    with pytest.raises(jdo.train.ConfigError, match="lifting.nodes"):
        jdo.train.validate(compose_cfg("workers=8", "lifting=shard_map", "lifting.nodes=3"))
