"""Compressed all-reduce, PowerSGD, CHOCO, local SGD and DiLoCo against numpy references and
their stated equivalences, under both liftings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import checks
from jdo import compress as C
from jdo import topology as T

W = 8
RNG = np.random.default_rng(0)
G = {
    "w": RNG.normal(size=(W, 40, 30)).astype(np.float32),
    "b": RNG.normal(size=(W, 30)).astype(np.float32),
}


def _apply(tx, grads, lifting, mesh, steps=1, params=None):
    """Runs tx.update `steps` times on fixed per-worker grads; returns the list of outputs."""
    params = params if params is not None else jax.tree.map(jnp.zeros_like, grads)
    init = jax.jit(jdo.lift(tx.init, lifting, mesh=mesh))
    upd = jax.jit(jdo.lift(lambda g, s, p: tx.update(g, s, p), lifting, mesh=mesh))
    state, outs = init(params), []
    for _ in range(steps):
        out, state = upd(grads, state, params)
        outs.append(jax.tree.map(np.asarray, out))
    return outs, state


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("ef", ["ef", "ef21", None])
def test_compressed_all_reduce_with_identity_is_the_mean(lifting, ef, mesh8):
    (out,), _ = _apply(
        jdo.transforms.compressed_all_reduce(C.identity(), error_feedback=ef), G, lifting, mesh8
    )
    for k in G:
        np.testing.assert_allclose(out[k][0], G[k].mean(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_compressed_all_reduce_top_k_with_error_feedback_matches_reference(lifting, mesh8):
    c = C.top_k(k=50)
    outs, state = _apply(jdo.transforms.compressed_all_reduce(c), G, lifting, mesh8, steps=3)
    memory = np.zeros_like(G["w"])
    for out in outs:
        sent = G["w"] + memory
        decoded = np.stack([np.asarray(c(s)) for s in sent])
        memory = sent - decoded
        np.testing.assert_allclose(out["w"][0], decoded.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.memory["w"], memory, rtol=1e-6, atol=1e-6)


def test_ef21_keeps_the_shared_estimate_equal_to_the_mean_of_the_workers(mesh8):
    _, state = _apply(
        jdo.transforms.compressed_all_reduce(C.top_k(k=40), error_feedback="ef21"),
        G,
        "vmap",
        mesh8,
        steps=4,
    )
    np.testing.assert_allclose(state.estimate["w"][0], state.memory["w"].mean(0), atol=1e-5)


def test_top_1_percent_moves_at_most_2_percent_of_the_dense_bytes(mesh8):
    grads = {"w": jnp.zeros((W, 256, 100)), "b": jnp.zeros((W, 100))}
    tx = jdo.transforms.compressed_all_reduce(C.top_k(0.01))
    upd = jax.jit(jdo.lift(lambda g, s: tx.update(g, s), "shard_map", mesh=mesh8))
    state = jax.jit(jdo.lift(tx.init, "shard_map", mesh=mesh8))(grads)
    sent = sum(jdo.comm.collective_bytes(upd, grads, state).values())
    dense = 4 * (256 * 100 + 100)
    assert sent <= 0.02 * dense, (sent, dense)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_powersgd_full_rank_is_exact_and_low_rank_is_rank_r(lifting, mesh8):
    (out,), _ = _apply(jdo.transforms.powersgd(rank=30), G, lifting, mesh8)
    np.testing.assert_allclose(out["w"][0], G["w"].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["b"][0], G["b"].mean(0), rtol=1e-6, atol=1e-6)  # 1-D: dense
    (low,), state = _apply(jdo.transforms.powersgd(rank=2), G, lifting, mesh8)
    assert np.linalg.matrix_rank(low["w"][0], tol=1e-4) == 2
    # Error feedback: what was sent plus what is remembered is what there was.
    np.testing.assert_allclose(low["w"][0] + state.memory["w"].mean(0), G["w"].mean(0), atol=1e-5)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_powersgd_matches_a_numpy_power_iteration(lifting, mesh8):
    tx = jdo.transforms.powersgd(rank=3)
    outs, state = _apply(tx, G, lifting, mesh8, steps=2)
    q = np.asarray(tx.init(jax.tree.map(lambda g: g[0], G)).qs["w"], np.float64)
    memory = np.zeros_like(G["w"], np.float64)
    for out in outs:  # the reference: error feedback, P = mean M Q, orth, Q = mean Mᵀ P̂
        m = G["w"] + memory
        p_hat = np.linalg.qr(np.mean(m @ q, axis=0))[0]
        q = np.mean(np.transpose(m, (0, 2, 1)) @ p_hat, axis=0)
        approx = p_hat @ q.T
        memory = m - approx
        np.testing.assert_allclose(out["w"][0], approx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.qs["w"][0], q, rtol=1e-4, atol=1e-4)


def test_powersgd_bytes_are_the_two_factors(mesh8):
    tx = jdo.transforms.powersgd(rank=2)
    one = jax.tree.map(lambda g: g[0], G)
    counted = jdo.comm.worker_bytes(lambda g, s: tx.update(g, s), W, one, tx.init(one))
    assert counted["all-reduce"] == 4 * ((40 + 30) * 2 + 30)  # P, Q, and the dense bias


@pytest.mark.parametrize("graph", ["ring", "complete"])  # complete: an all-gather of payloads
@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_choco_with_identity_and_gamma_1_is_exact_gossip(lifting, graph, mesh8):
    topo = T.ring(W) if graph == "ring" else T.complete(W)
    params = jax.tree.map(lambda g: -g, G)
    choco = optax.chain(optax.sgd(0.1), jdo.transforms.choco(topo, C.identity(), gamma=1.0))
    gossip = optax.chain(optax.sgd(0.1), jdo.transforms.gossip(topo))
    for a, b in zip(
        _apply(choco, G, lifting, mesh8, 3, params)[0],
        _apply(gossip, G, lifting, mesh8, 3, params)[0],
        strict=True,
    ):
        for k in G:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_choco_matches_dense_reference_with_top_k(lifting, mesh8):
    topo, gamma, c = T.exponential(W), 0.4, C.top_k(k=20)
    x0 = RNG.normal(size=(W, 40, 30)).astype(np.float32)
    tx = optax.chain(optax.sgd(0.0), jdo.transforms.choco(topo, c, gamma=gamma))
    init = jax.jit(jdo.lift(tx.init, lifting, mesh=mesh8))
    upd = jax.jit(jdo.lift(lambda p, s: tx.update(jnp.zeros_like(p), s, p), lifting, mesh=mesh8))
    x, state = jnp.asarray(x0), init(x0)
    ref_x, public = x0.astype(np.float64), np.zeros_like(x0, np.float64)
    for t in range(6):
        u, state = upd(x, state)
        x = x + u
        q = np.stack([np.asarray(c(jnp.asarray(d, jnp.float32))) for d in ref_x - public])
        public = public + q
        ref_x = ref_x + gamma * (np.tensordot(topo.mixing_matrix(t), public, 1) - public)
    np.testing.assert_allclose(x, ref_x, rtol=1e-4, atol=1e-5)


TARGETS = np.random.default_rng(1).normal(size=(W, 5)).astype(np.float32)


def _sgd_run(tx, lifting, mesh, steps):
    """Workers minimising ||x − c_i||²/2 (gradient x − c_i) with `tx`; returns the iterates."""
    targets = TARGETS
    init = jax.jit(jdo.lift(tx.init, lifting, mesh=mesh))
    upd = jax.jit(jdo.lift(lambda x, c, s: tx.update(x - c, s, x), lifting, mesh=mesh))
    x = jnp.zeros((W, 5))
    state, xs = init(x), []
    for _ in range(steps):
        u, state = upd(x, targets, state)
        x = x + u
        xs.append(np.asarray(x))
    return targets, xs


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_local_sgd_with_h_1_is_allreduce_sgd(lifting, mesh8):
    _, a = _sgd_run(optax.chain(optax.sgd(0.1), jdo.transforms.local_sgd(1)), lifting, mesh8, 5)
    _, b = _sgd_run(optax.chain(jdo.transforms.all_reduce(), optax.sgd(0.1)), lifting, mesh8, 5)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("start", [0, 3])
def test_local_sgd_averages_every_h_steps_after_start(lifting, start, mesh8):
    targets, xs = _sgd_run(
        optax.chain(optax.sgd(0.1), jdo.transforms.local_sgd(4, start=start)), lifting, mesh8, 10
    )
    x = np.zeros((W, 5))
    for t in range(10):
        x = x - 0.1 * (x - targets)
        if (t + 1) % 4 == 0 or t < start:
            x = np.broadcast_to(x.mean(0), x.shape).copy()
        np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)


def test_hierarchical_local_sgd(mesh8):
    tx = optax.chain(optax.sgd(0.1), jdo.transforms.hierarchical_local_sgd(4, 2, 6))
    targets, xs = _sgd_run(tx, "shard_map", mesh8, 12)
    x = np.zeros((W, 5))
    for t in range(12):
        x = x - 0.1 * (x - targets)
        if (t + 1) % 6 == 0:
            x = np.broadcast_to(x.mean(0), x.shape).copy()
        elif (t + 1) % 2 == 0:
            x = x.reshape(2, 4, 5).mean(1, keepdims=True).repeat(4, 1).reshape(W, 5)
        np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_diloco_h_1_outer_sgd_1_is_the_all_reduce_of_the_inner_updates(lifting, mesh8):
    inner = optax.adam(0.05)
    _, a = _sgd_run(jdo.transforms.diloco(inner, optax.sgd(1.0), sync_every=1), lifting, mesh8, 5)
    # Reference: each worker's own Adam update from the common point, averaged.
    targets, _ = _sgd_run(optax.identity(), lifting, mesh8, 1)
    x = np.zeros((W, 5), np.float32)
    states = jax.vmap(inner.init)(jnp.asarray(x))
    for t in range(5):
        u, states = jax.vmap(inner.update)(jnp.asarray(x - targets), states, jnp.asarray(x))
        x = np.broadcast_to((x + np.asarray(u)).mean(0), x.shape).astype(np.float32)
        np.testing.assert_allclose(a[t], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_diloco_matches_reference_with_nesterov_outer(lifting, mesh8):
    H, lr_in = 3, 0.1
    outer = optax.sgd(0.7, momentum=0.9, nesterov=True)
    targets, xs = _sgd_run(
        jdo.transforms.diloco(optax.sgd(lr_in), outer, sync_every=H), lifting, mesh8, 9
    )
    x, theta, mom = np.zeros((W, 5)), np.zeros(5), np.zeros(5)
    for t in range(9):
        x = x - lr_in * (x - targets)
        if (t + 1) % H == 0:
            delta = theta - x.mean(0)
            mom = 0.9 * mom + delta
            theta = theta - 0.7 * (delta + 0.9 * mom)
            x = np.broadcast_to(theta, x.shape).copy()
        np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)


def test_streaming_diloco_fragments_sync_on_staggered_schedules(mesh8):
    tx = jdo.transforms.diloco(optax.sgd(0.1), optax.sgd(1.0), sync_every=4, fragments=2)
    params = {"a": jnp.zeros((W, 3)), "b": jnp.zeros((W, 3))}
    targets = {k: jnp.asarray(RNG.normal(size=(W, 3)), jnp.float32) for k in params}
    init = jax.jit(jdo.lift(tx.init, "vmap"))
    upd = jax.jit(
        jdo.lift(lambda x, c, s: tx.update(jax.tree.map(jnp.subtract, x, c), s, x), "vmap")
    )
    state, synced = init(params), []
    for _ in range(8):
        u, state = upd(params, targets, state)
        params = optax.apply_updates(params, u)
        synced.append(
            {k: float(np.ptp(np.asarray(v), axis=0).max()) < 1e-6 for k, v in params.items()}
        )
    # Fragment "a" syncs after steps 4, 8; fragment "b" (offset H/2 = 2) after steps 6 (2 + 4).
    assert [s["a"] for s in synced] == [False, False, False, True, False, False, False, True]
    assert [s["b"] for s in synced] == [False, False, False, False, False, True, False, False]


def test_fedavg_partial_participation_averages_a_fixed_size_random_subset(mesh8):
    tx = jdo.transforms.diloco(
        optax.sgd(0.1), optax.sgd(1.0), sync_every=2, participation=0.5, seed=3
    )
    targets, xs = _sgd_run(tx, "shard_map", mesh8, 4)
    x = np.zeros((W, 5))
    for t in range(4):
        x = x - 0.1 * (x - targets)
        if (t + 1) % 2 == 0:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), (t + 1) // 2)
            chosen = np.asarray(jax.random.permutation(key, W))[:4]
            x = np.broadcast_to(x[chosen].mean(0), x.shape).copy()
        np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)


def test_diloco_with_compressed_outer_communication_and_prox(mesh8):
    tx = jdo.transforms.diloco(
        optax.sgd(0.1), optax.sgd(1.0), sync_every=2, compressor=C.bf16(), prox=0.5
    )
    targets, xs = _sgd_run(tx, "shard_map", mesh8, 4)
    x, theta = np.zeros((W, 5)), np.zeros(5)
    for t in range(4):
        x = x - 0.1 * ((x - targets) + 0.5 * (x - theta))
        if (t + 1) % 2 == 0:
            delta = np.asarray(C.bf16()(jnp.asarray(theta - x, jnp.float32)), np.float64)
            theta = theta - delta.mean(0)
            x = np.broadcast_to(theta, x.shape).copy()
        np.testing.assert_allclose(xs[t], x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("participation", [1.0, 0.5])
def test_diloco_with_the_identity_compressor_is_diloco_without_one(participation, mesh8):
    # The runner passes the configured compressor always (compression=none: the identity).
    make = lambda compressor: jdo.transforms.diloco(
        optax.sgd(0.1), sync_every=2, participation=participation, compressor=compressor
    )
    _, plain = _sgd_run(make(None), "shard_map", mesh8, 6)
    _, identity = _sgd_run(make(C.identity()), "shard_map", mesh8, 6)
    for a, b in zip(plain, identity, strict=True):
        np.testing.assert_array_equal(a, b)
    params = jnp.zeros(5)

    def count(compressor):
        tx = make(compressor)
        step = lambda g, s, p: tx.update(g, s, p)
        return jdo.comm.worker_bytes(step, W, params, tx.init(params), params)

    assert count(C.identity()) == count(None)
    assert count(None)["all-reduce"] > 0 and count(None)["all-gather"] == 0


def test_bad_arguments():
    cases = [
        (
            lambda: jdo.transforms.diloco(optax.sgd(0.1), sync_every=4, delay=4),
            checks.InvalidArgument,
            "delay",
            r"must be in \[0, sync_every\) = \[0, 4\), got 4",
        ),
        (
            lambda: jdo.transforms.diloco(optax.sgd(0.1), outer="sgd"),
            checks.WrongType,
            "outer",
            "must be an optax.GradientTransformation",
        ),
        (
            lambda: jdo.transforms.diloco(optax.sgd(0.1), mixing=1.0),
            checks.InvalidArgument,
            "mixing",
            r"must be in \[0, 1\), got 1.0",
        ),
        (
            lambda: jdo.transforms.compressed_all_reduce(C.identity(), error_feedback="ef3"),
            checks.InvalidArgument,
            "error_feedback",
            "must be one of 'ef', 'ef21', None",
        ),
        (
            lambda: jdo.transforms.compressed_all_reduce("top_k"),
            checks.WrongType,
            "compressor",
            "must be a jdo.compress.Compressor",
        ),
        (
            lambda: jdo.transforms.hierarchical_local_sgd(2, 4, 6),
            checks.InvalidArgument,
            "every",
            r"must be a multiple of group_every \(4\), got 6",
        ),
        (
            lambda: jdo.transforms.choco(T.one_peer_exponential(4), C.identity()),
            checks.InvalidArgument,
            "topology",
            "must be static for choco",
        ),
        (
            lambda: jdo.transforms.choco(T.ring(4), C.identity(), gamma=0.0),
            checks.InvalidArgument,
            "gamma",
            r"must be in \(0, 1\], got 0.0",
        ),
        # scaled random-k with error feedback: the memory grows until NaN (step 139 on digits)
        (
            lambda: jdo.transforms.compressed_all_reduce(C.random_k(0.01)),
            checks.InvalidArgument,
            "compressor",
            "must be contractive for error_feedback='ef'",
        ),
        (
            lambda: jdo.transforms.compressed_all_reduce(C.random_k(0.01), error_feedback="ef21"),
            checks.InvalidArgument,
            "compressor",
            "use scale=False",
        ),
        (
            lambda: jdo.transforms.choco(T.ring(4), C.random_k(0.01)),
            checks.InvalidArgument,
            "compressor",
            "must be contractive for choco",
        ),
        (
            lambda: jdo.transforms.powersgd(0),
            checks.InvalidArgument,
            "rank",
            "must be a positive integer, got 0",
        ),
        (
            lambda: jdo.algorithms.fedavg(lambda p, b, k: (0.0, {}), optax.sgd(0.1), local_steps=0),
            checks.InvalidArgument,
            "local_steps",
            "must be a positive integer, got 0",
        ),
        (
            lambda: jdo.algorithms.local_sgd(
                lambda p, b, k: (0.0, {}), optax.sgd(0.1), start=3, group_size=2
            ),
            checks.InvalidArgument,
            "group_size",
            "does not combine with start=3",
        ),
    ]
    for make, kind, argument, message in cases:
        with pytest.raises(kind, match=message) as e:
            make()
        assert e.value.argument == argument
    # what the refusals leave allowed
    jdo.transforms.compressed_all_reduce(C.random_k(0.01), error_feedback=None)
    jdo.transforms.compressed_all_reduce(C.random_k(0.01, scale=False))
    jdo.transforms.choco(T.ring(4), C.random_k(0.01, scale=False))
