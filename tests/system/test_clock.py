"""Per-worker clocks against a float64 numpy max-plus reference, under vmap and shard_map.

The reference knows nothing of jdo.system.clock: it applies the issue's semantics with the
closed-form ring costs (all-reduce 2(n-1)a + 2(n-1)/n S/B; a message a + S/B on its link).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdo import algorithms, comm, topology
from jdo.lifting import lift
from jdo.system import Cluster, Link, clock, shifted_exponential, slow_worker
from jdo.train.clocked import with_clock

W, STEPS, DIM = 8, 20, 5
INTRA, INTER = (2e-4, 2e5), (1e-3, 1e4)  # (alpha s, B bytes/s): transfers matter
BASE = 0.01 * (1 + np.arange(W) / 10)  # heterogeneous compute seconds per worker
S = 4 * (DIM + 1)  # float32 params {"w": [5], "b": []}: one message / all-reduce buffer


def loss_fn(params, batch, key):
    del key
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2), {}


PARAMS = {"w": jnp.zeros((DIM,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
BATCH = (
    jax.random.normal(jax.random.key(0), (W, 4, DIM)),
    jax.random.normal(jax.random.key(1), (W, 4)),
)


def make_cluster(stragglers, seed=3):
    return Cluster(
        workers_per_node=2,
        nodes=W // 2,
        intra=Link(*INTRA),
        inter=Link(*INTER),
        stragglers=stragglers,
        seed=seed,
    )


STRAGGLERS = {
    "slow_worker": slow_worker([0, 3], 5.0),
    "shifted_exponential": shifted_exponential(1.0, 0.5),
}

ALGORITHMS = {
    "allreduce_sgd": lambda: algorithms.allreduce_sgd(loss_fn, optax.sgd(0.1)),
    "dpsgd_ring": lambda: algorithms.dpsgd(loss_fn, optax.sgd(0.1), topology.ring(W)),
    "dpsgd_one_peer": lambda: algorithms.dpsgd(
        loss_fn, optax.sgd(0.1), topology.one_peer_exponential(W)
    ),
    "local_sgd_h4": lambda: algorithms.local_sgd(loss_fn, optax.sgd(0.1), every=4),
}


def compute_draws(cluster) -> np.ndarray:
    """``[STEPS, W]`` compute seconds: BASE through the stragglers (their own draws)."""
    key = jax.random.key(cluster.seed)
    sample = jax.jit(jax.vmap(cluster.stragglers.sample, in_axes=(None, 0, None, 0)))
    base = jnp.asarray(BASE, jnp.float32)
    draws = [sample(key, jnp.arange(W), jnp.int32(t), base) for t in range(STEPS)]
    return np.stack([np.asarray(d) for d in draws]).astype(np.float64)


def reference(name: str, c: np.ndarray) -> np.ndarray:
    """``[STEPS, W]`` clocks after each step (float64 max-plus recursion)."""
    n = W
    allreduce = 2 * (n - 1) * INTER[0] + 2 * (n - 1) / n * S / INTER[1]
    node = np.arange(n) // 2
    t, out = np.zeros(n), []
    topo = {"dpsgd_ring": topology.ring(n), "dpsgd_one_peer": topology.one_peer_exponential(n)}
    for k in range(STEPS):
        ready = t + c[k]
        if name == "allreduce_sgd" or (name == "local_sgd_h4" and (k + 1) % 4 == 0):
            t = np.full(n, ready.max() + allreduce)
        elif name == "local_sgd_h4":
            t = ready
        else:
            w = topo[name].mixing_matrix(k)
            t = ready.copy()
            for i in range(n):
                for j in range(n):
                    if j != i and w[i, j] > 0:
                        alpha, bw = INTRA if node[i] == node[j] else INTER
                        t[i] = max(t[i], ready[j] + alpha + S / bw)
        out.append(t.copy())
    return np.stack(out)


def run_clocked(name: str, cluster, lifting: str, mesh8):
    algo = with_clock(cluster, BASE)(ALGORITHMS[name]())
    mesh = mesh8 if lifting == "shard_map" else None
    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    step = jax.jit(lift(algo.step, lifting, mesh=mesh, in_axes=(0, 0, None)))
    state = init(PARAMS, jax.random.split(jax.random.key(0), W))
    clocks, vectors = [], None
    for k in range(STEPS):
        state, metrics = step(state, BATCH, jax.random.key(k))
        clocks.append(clock.seconds(state.clock.now))
        vectors = np.asarray(metrics["clock"])
    return np.stack(clocks), vectors, state


@pytest.mark.parametrize("straggler", sorted(STRAGGLERS))
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_clock_matches_max_plus_reference_vmap(name, straggler, mesh8):
    cluster = make_cluster(STRAGGLERS[straggler])
    clocks, vectors, _ = run_clocked(name, cluster, "vmap", mesh8)
    expected = reference(name, compute_draws(cluster))
    np.testing.assert_allclose(clocks, expected, rtol=1e-5, atol=0)
    if name == "allreduce_sgd":  # every clock equal after each step
        assert np.all(clocks == clocks[:, :1])
    # compute + comm + wait, per step and averaged over workers, times the steps = mean clock
    times = clock.times(vectors)
    parts = times["time/compute"] + times["time/comm"] + times["time/wait"]
    np.testing.assert_allclose(parts * STEPS, expected[-1].mean(), rtol=1e-5)
    assert times["time/total"] == pytest.approx(expected[-1].max(), rel=1e-6)
    assert times["time/min"] == pytest.approx(expected[-1].min(), rel=1e-6)
    compute = compute_draws(cluster).sum(0).mean()
    np.testing.assert_allclose(times["time/compute"] * STEPS, compute, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_clock_same_under_shard_map(name, mesh8):
    cluster = make_cluster(STRAGGLERS["shifted_exponential"])
    clocks, _, _ = run_clocked(name, cluster, "shard_map", mesh8)
    expected = reference(name, compute_draws(cluster))
    np.testing.assert_allclose(clocks, expected, rtol=1e-5, atol=0)


def test_local_sgd_pays_only_when_it_communicates(mesh8):
    cluster = make_cluster(None)
    clocks, _, _ = run_clocked("local_sgd_h4", cluster, "vmap", mesh8)
    steps = np.diff(np.concatenate([np.zeros((1, W)), clocks]), axis=0)
    quiet = [k for k in range(STEPS) if (k + 1) % 4]
    np.testing.assert_allclose(steps[quiet], np.broadcast_to(BASE, (len(quiet), W)), rtol=1e-5)
    assert np.all(steps[3] > BASE.max())  # the 4th step waits for the slowest and all-reduces


def test_same_seed_same_clock(mesh8):
    cluster = make_cluster(STRAGGLERS["shifted_exponential"])
    first, _, _ = run_clocked("dpsgd_ring", cluster, "vmap", mesh8)
    second, _, _ = run_clocked("dpsgd_ring", cluster, "vmap", mesh8)
    np.testing.assert_array_equal(first, second)
    other_seed = make_cluster(STRAGGLERS["shifted_exponential"], seed=4)
    other, _, _ = run_clocked("dpsgd_ring", other_seed, "vmap", mesh8)
    assert not np.array_equal(first, other)


def test_double_float_clock_keeps_float64_accuracy():
    """1e5 steps of 0.1 s + a varying 1e-4 s: a float32 sum drifts by ~1e-3 relative; the
    clock stays within 1e-7 of float64."""
    n = 100_000
    xs = (0.1 + 1e-4 * np.sin(np.arange(n))).astype(np.float32)

    def body(t, x):
        return clock.add(t, x), None

    total, _ = jax.jit(lambda xs: jax.lax.scan(body, clock.zero_time(), xs))(xs)
    exact = xs.astype(np.float64).sum()
    assert abs(float(clock.seconds(total)) - exact) / exact < 1e-7
    naive = jax.jit(lambda xs: jax.lax.scan(lambda a, x: (a + x, None), jnp.float32(0), xs)[0])
    assert abs(float(naive(xs)) - exact) / exact > 1e-5  # the reason for the pair


def test_no_clock_means_no_clock_collectives(mesh8):
    """Without a running clock, jdo.comm's control flow is jax.lax's own and a mean is one
    psum: no clock collective (the clocks' all-gather) in the program; with one, there is."""
    average = lambda a: comm.varying(comm.mean(a))  # both branches typed per worker
    step = lambda v: comm.cond(v.sum() > 0, average, lambda a: a, v)
    plain = lift(step, "shard_map", mesh=mesh8)
    text = str(jax.make_jaxpr(plain)(jnp.ones((W, 3))))
    assert "all_gather" not in text and "psum" in text
    clocked = lift(clock.clocked(step, make_cluster(None)), "shard_map", mesh=mesh8)
    start = jax.jit(lift(lambda _: clock.start(0.01), "shard_map", mesh=mesh8))(jnp.arange(W))
    assert "all_gather" in str(jax.make_jaxpr(clocked)(start, jnp.ones((W, 3))))


@pytest.mark.parametrize("straggler", sorted(STRAGGLERS))
def test_backup_workers_drop_exactly_the_slowest(straggler, mesh8):
    """jdo.comm.backup_mean with b = 2: each step averages the W − b workers whose clocks are
    ready first and drops the b slowest by simulated time (Chen et al. 2016); every clock then
    jumps to the (W − b)-th arrival plus the all-reduce."""
    b, cluster = 2, make_cluster(STRAGGLERS[straggler])
    step = clock.clocked(lambda v: comm.varying(comm.backup_mean(v, b)), cluster)
    lifted = jax.jit(lift(step, "vmap", in_axes=(0, 0)))
    state = jax.jit(lift(lambda _: clock.start(BASE), "vmap"))(jnp.arange(W))
    c, allreduce, t = (
        compute_draws(cluster),
        2 * (W - 1) * INTER[0] + 2 * (W - 1) / W * 16 / INTER[1],
        0.0,
    )
    values = np.arange(W, dtype=np.float32)[:, None] * np.ones((W, 4), np.float32)
    for k in range(8):
        x = jnp.asarray(values + k)
        out, state = lifted(state, x)
        ready = t + c[k]
        kept = np.argsort(ready, kind="stable")[: W - b]
        np.testing.assert_allclose(
            np.asarray(out), np.broadcast_to(np.asarray(x)[kept].mean(0), (W, 4)), rtol=1e-6
        )
        t = np.sort(ready)[W - b - 1] + allreduce
        np.testing.assert_allclose(clock.seconds(state.now), np.full(W, t), rtol=1e-6)
    if straggler == "slow_worker":  # workers 0 and 3 are 5x slower: always the dropped ones
        assert sorted(set(range(W)) - set(kept)) == [0, 3]
    # no clock: every worker ready at once, the tie rule keeps the W - b lowest indices
    plain = jax.jit(lift(lambda v: comm.backup_mean(v, b), "vmap"))(jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(plain), np.broadcast_to(values[: W - b].mean(0), (W, 4)))
