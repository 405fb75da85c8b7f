"""The sharded parameter server's pieces against numpy references, under both liftings: the
reduce-scatter, which worker holds which shard of the optimizer state (uneven parameter
counts padded), its bytes in the HLO and its time on the clock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import checks, comm, system
from jdo.system import Cluster, Link, clock
from jdo.transforms.sharded import shard_size

W = 8


LIFTINGS = (*jdo.LIFTINGS, "two_level")  # two_level: shard_map on 2 nodes x 4 devices


def _lifting(lifting, mesh8):
    """(lifting, mesh) for ``jdo.lift``: ``two_level`` is shard_map on a (nodes, local) mesh,
    where the reduce-scatter and all-gather run inside the node, then across."""
    if lifting == "two_level":
        return "shard_map", jdo.train.make_mesh(W, nodes=2)
    return lifting, mesh8


def _run(fn, lifting, mesh, *args, in_axes=0):
    lifting, mesh = _lifting(lifting, mesh)
    return jax.jit(jdo.lift(fn, lifting, mesh=mesh, in_axes=in_axes))(*args)


@pytest.mark.parametrize("lifting", LIFTINGS)
@pytest.mark.parametrize("op", ["mean", "sum"])
def test_reduce_scatter_matches_reference(lifting, op, mesh8):
    rng = np.random.default_rng(0)  # each test its own draws: the same under any test order
    xs = {"a": rng.normal(size=(W, 2 * W, 3)).astype(np.float32), "b": np.arange(W * W * 1.0)}
    xs["b"] = xs["b"].reshape(W, W).astype(np.float32)
    out = _run(lambda x: comm.reduce_scatter(x, op=op), lifting, mesh8, xs)
    for k in xs:
        expected = comm.reduce_scatter_reference(xs[k], op)
        np.testing.assert_allclose(out[k], expected, rtol=1e-6, atol=1e-6)


def test_reduce_scatter_refuses_a_leading_axis_the_workers_do_not_divide(mesh8):
    with pytest.raises(checks.InvalidArgument, match="multiple of the 8 workers"):
        _run(comm.reduce_scatter, "vmap", mesh8, np.zeros((W, 12), np.float32))


def _adamw_reference(grads_seq, x, lr=0.1, wd=0.5, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW (float64) on the mean over workers of the flat gradients, at the fixed flat params
    ``x``: (updates, mu) per step."""
    mu = nu = 0.0
    out = []
    for t, g in enumerate(grads_seq, start=1):
        g = g.mean(axis=0)
        mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
        direction = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
        out.append((-lr * (direction + wd * x), mu))
    return out


@pytest.mark.parametrize("lifting", LIFTINGS)
def test_each_worker_keeps_adamw_state_of_its_own_padded_shard(lifting, mesh8):
    # P = 3 + 4 + 12 = 19 entries over 8 workers: shards of S = 3, the last 5 entries padding;
    # weight decay reads each worker's shard of the params
    shapes = {"a": (3,), "b": (2, 2), "c": (4, 3)}
    rng = np.random.default_rng(2)  # its own draws: the same under any test order
    one = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    params = {k: np.broadcast_to(v, (W, *v.shape)) for k, v in one.items()}
    grads_seq = [
        {k: rng.normal(size=(W, *s)).astype(np.float32) for k, s in shapes.items()}
        for _ in range(3)
    ]
    tx = jdo.transforms.sharded_update(optax.adamw(0.1, weight_decay=0.5))
    state = _run(tx.init, lifting, mesh8, params)
    name, mesh = _lifting(lifting, mesh8)
    update = jax.jit(jdo.lift(tx.update, name, mesh=mesh))
    flat = lambda g: np.concatenate([g[k].reshape(W, -1) for k in sorted(shapes)], axis=1)
    size = shard_size(19, W)
    x = flat(params)[0].astype(np.float64)
    reference = _adamw_reference([flat(g).astype(np.float64) for g in grads_seq], x)
    for grads, (ref_update, ref_mu) in zip(grads_seq, reference, strict=True):
        updates, state = update(grads, state, params)
        # float32 Adam's own rounding: unsharded optax.adamw on the float32 mean gradient is
        # up to 1.01e-6 from this float64 reference on updates of ~0.1 (these draws), so the
        # bound is relative; the sharded step equals unsharded Adam to 1e-6 in
        # tests/algorithms/test_parameter_server.py
        np.testing.assert_allclose(
            flat(updates), np.broadcast_to(ref_update, (W, 19)), rtol=2e-5, atol=1e-6
        )
        mu = np.asarray(state.inner[0].mu)  # [W, S]: worker i's moments of entries i·S..i·S+S
        assert mu.shape == (W, size)
        padded = np.concatenate([ref_mu, np.zeros(W * size - 19)])
        np.testing.assert_allclose(mu, padded.reshape(W, size), rtol=1e-6, atol=1e-7)


def _step_fn(tx):
    def step(grads, state, params):
        return tx.update(grads, state, params)

    return step


def test_step_sends_a_reduce_scatter_and_an_all_gather_of_the_padded_vector():
    params = {"w": jnp.zeros((10, 3)), "b": jnp.zeros((3,))}  # P = 33: padded to 40, S = 5
    tx = jdo.transforms.sharded_update(optax.sgd(0.1))
    state = jax.eval_shape(
        jax.vmap(tx.init, axis_name=jdo.WORKERS, axis_size=W, in_axes=None), params
    )
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), state)
    ops = comm.worker_ops(_step_fn(tx), W, params, state, params)
    assert sorted(op.kind for op in ops) == ["all-gather", "reduce-scatter"]
    padded = 4 * W * shard_size(33, W)
    assert {op.kind: op.nbytes for op in ops} == {"reduce-scatter": padded, "all-gather": padded}
    # on the wire: each (n-1)/n of the padded vector, together a ring all-reduce of it
    wire = sum(system.wire_bytes(op) for op in ops)
    assert wire == pytest.approx(2 * (W - 1) / W * padded)


def test_clock_prices_the_reduce_scatter_and_the_all_gather():
    alpha, bandwidth = 1e-3, 1e4  # every ring leaves its node: the inter-node link
    cluster = Cluster(
        workers_per_node=2, nodes=W // 2, intra=Link(1e-5, 1e9), inter=Link(alpha, bandwidth)
    )
    params = {"w": jnp.zeros((W, 10, 3)), "b": jnp.zeros((W, 3))}
    tx = jdo.transforms.sharded_update(optax.sgd(0.1))
    clocked = clock.clocked(_step_fn(tx), cluster)

    def run(grads, params):
        return clocked(clock.start(0.01), grads, tx.init(params), params)[1].now

    now = jax.jit(jax.vmap(run, axis_name=jdo.WORKERS))(params, params)
    padded = 4 * W * shard_size(33, W)
    ring = (W - 1) * alpha + (W - 1) / W * padded / bandwidth  # each of the two collectives
    np.testing.assert_allclose(clock.seconds(now), 0.01 + 2 * ring, rtol=1e-6)


def test_sharded_update_takes_an_optax_optimizer():
    with pytest.raises(checks.WrongType, match="optimizer must be an optax"):
        jdo.transforms.sharded_update("adam")
