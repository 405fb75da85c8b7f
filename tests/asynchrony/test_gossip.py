"""AD-PSGD (asynchronous gossip): the event schedule against an independent simulation, the
mixing of every event and wave (symmetric, doubly stochastic), the algorithm against a dense
numpy recursion over the host-side events (stale reads included) under vmap and shard_map, the
equal-compute-times pattern, and a run through the runner."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import checks, system
from jdo import topology as T
from jdo.asynchrony import (
    gossip_schedule,
    matching_matrix,
    pairwise_average,
    pairwise_average_reference,
)

W, D, N = 8, 4, 6
LR, MOMENTUM = 0.1, 0.9


def _cluster(**kw):
    return system.Cluster(
        inter=system.Link(latency_s=1e-3, bandwidth_Bps=1e6),
        compute=system.fixed(0.01),
        stragglers=system.shifted_exponential(1.0, 1.0),
        seed=3,
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# The schedule
# ----------------------------------------------------------------------------------------------


def _independent_events(topology, cluster, slow, factor, num_events, nbytes, seed):
    """A plain re-simulation: at each event, scan every worker's next finishing time (no heap,
    no waves, no JAX). Compute times: ``base · factor`` (float32, as the stragglers compute
    them) for the ``slow`` workers, else ``base``."""
    n = topology.n
    w0 = topology.mixing_matrix(0)
    nbrs = [[j for j in range(n) if j != i and w0[i, j] > 0] for i in range(n)]
    base = [np.float32(cluster.compute_seconds(i)) for i in range(n)]
    compute = [float(b * np.float32(factor)) if i in slow else float(b) for i, b in enumerate(base)]
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]

    def plan(i, t):
        j = nbrs[i][int(rngs[i].integers(len(nbrs[i])))]
        return t + compute[i] + cluster.message_time(i, j, nbytes), j

    nxt = [(*plan(i, 0.0), 0, 0.0) for i in range(n)]  # (time, partner, k, read time)
    touched = np.zeros(n, int)  # events that touched each model
    read_at = np.zeros(n, int)
    out = []
    for _ in range(num_events):
        i = min(range(n), key=lambda w: (nxt[w][0], w))
        t, j, k, s = nxt[i]
        touched[i] += 1
        touched[j] += 1
        out.append((t, i, j, k, s, read_at[i], touched[i]))
        read_at[i] = touched[i]
        nxt[i] = (*plan(i, t), k + 1, t)
    return out


def test_schedule_matches_an_independent_simulation():
    topology = T.ring(W)
    cluster = system.Cluster(
        workers_per_node=2,  # pairs (0, 1), (2, 3), ... share a node: faster intra links
        intra=system.Link(latency_s=1e-4, bandwidth_Bps=1e8),
        inter=system.Link(latency_s=1e-3, bandwidth_Bps=1e6),
        compute=system.fixed(0.01),
        stragglers=system.slow_worker([2, 5], 3.0),
        speeds=(1.0, 1.0, 1.0, 0.5),  # worker 3 and 7 at half speed
    )
    sched = gossip_schedule(topology, cluster, num_events=60, message_bytes=4096, seed=7)
    ref = _independent_events(topology, cluster.for_workers(W), (2, 5), 3.0, 60, 4096, 7)
    got = [
        (e.time, e.worker, e.partner, e.gradient, e.read_time, e.read_version, e.applied_version)
        for e in sched.events()
    ]
    assert [g[1:4] + g[5:] for g in got] == [r[1:4] + r[5:] for r in ref]
    np.testing.assert_allclose([g[0] for g in got], [r[0] for r in ref], rtol=1e-12)
    np.testing.assert_allclose([g[4] for g in got], [r[4] for r in ref], rtol=1e-12)
    assert np.all(np.diff(sched.time) >= 0)
    assert sched.staleness.max() >= 1  # neighbours did average into models being computed on
    per_worker = np.bincount(sched.worker, minlength=W)
    assert per_worker[2] < per_worker[1] and per_worker[5] < per_worker[4]  # slow: fewer


def test_a_shorter_schedule_is_a_prefix_and_waves_are_disjoint_matchings():
    topology, cluster = T.torus(W), _cluster()
    long = gossip_schedule(topology, cluster, num_waves=40)
    short = gossip_schedule(topology, cluster, num_waves=15)
    assert short.num_waves == 15 and long.num_waves == 40
    for f in ("time", "worker", "partner", "wave", "read_version"):
        np.testing.assert_array_equal(getattr(short, f), getattr(long, f)[: len(short)])
    nbrs = jdo.asynchrony.neighbours(topology)
    for w in range(long.num_waves):
        members = np.concatenate([long.worker[long.wave == w], long.partner[long.wave == w]])
        assert len(set(members.tolist())) == len(members)  # no worker twice in a wave
    for e in long.events():
        assert e.partner in nbrs[e.worker]
    # a wave ends only where the next event shares a worker with it
    for w in range(long.num_waves - 1):
        first_next = np.flatnonzero(long.wave == w + 1)[0]
        members = set(long.worker[long.wave == w]) | set(long.partner[long.wave == w])
        assert {long.worker[first_next], long.partner[first_next]} & members


@pytest.mark.parametrize("topo", ["ring", "star", "complete"])
def test_every_event_and_wave_mixes_with_a_symmetric_doubly_stochastic_matrix(topo):
    topology = {"ring": T.ring(W), "star": T.star(W), "complete": T.complete(W)}[topo]
    sched = gossip_schedule(topology, _cluster(), num_waves=30, seed=1)
    for e in range(len(sched)):
        m = sched.event_matrix(e)
        i, j = sched.worker[e], sched.partner[e]
        expected = np.eye(W)
        expected[np.ix_([i, j], [i, j])] = 0.5
        np.testing.assert_array_equal(m, expected)
    for w in range(sched.num_waves):
        m = sched.wave_matrix(w)
        product = np.eye(W)
        for e in np.flatnonzero(sched.wave == w):
            product = sched.event_matrix(e) @ product
        np.testing.assert_allclose(m, product, atol=0)  # the wave is its events in order
        np.testing.assert_allclose(m, m.T, atol=0)
        np.testing.assert_allclose(m.sum(0), 1, atol=1e-15)
        np.testing.assert_allclose(m.sum(1), 1, atol=1e-15)
        assert (m >= 0).all()


def test_equal_compute_times_give_rounds_in_worker_order():
    sched = gossip_schedule(T.ring(W), num_waves=60)  # no cluster: 1 s per gradient
    rounds = sched.time.astype(int)
    np.testing.assert_array_equal(sched.time, rounds)
    full = rounds < rounds.max()  # the last round may be cut by the horizon
    for r in np.unique(rounds[full]):
        np.testing.assert_array_equal(sched.worker[rounds == r], np.arange(W))
        np.testing.assert_array_equal(sched.gradient[rounds == r], r - 1)
    # two workers: forced partners, one event per wave, staleness 0 then always 1
    two = gossip_schedule(T.complete(2), num_waves=10)
    np.testing.assert_array_equal(two.worker, [0, 1] * 5)
    np.testing.assert_array_equal(two.partner, [1, 0] * 5)
    np.testing.assert_array_equal(two.wave, np.arange(10))
    np.testing.assert_array_equal(two.time, np.repeat(np.arange(1.0, 6.0), 2))
    np.testing.assert_array_equal(two.staleness, [0] + [1] * 9)


# ----------------------------------------------------------------------------------------------
# The exchange and the algorithm
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_pairwise_average_matches_its_reference(lifting, mesh8):
    topology = T.star(W)
    sched = gossip_schedule(topology, num_waves=12, seed=2)
    fn = jax.jit(jdo.lift(lambda x, p: pairwise_average(x, p, topology), lifting, mesh=mesh8))
    xs = np.random.default_rng(0).normal(size=(W, 3)).astype(np.float32)
    for partners in sched.partners():
        np.testing.assert_array_equal(fn(xs, partners), pairwise_average_reference(xs, partners))
        np.testing.assert_allclose(
            pairwise_average_reference(xs, partners), matching_matrix(partners) @ xs, rtol=1e-6
        )


def _loss(params, batch, key):
    del key
    r = batch["a"] @ params["w"] - batch["y"]
    return 0.5 * jnp.mean(r**2), {}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(W, N, D)).astype(np.float32)
    y = (a @ rng.normal(size=D) + rng.normal(size=(W, N)) * 2).astype(np.float32)
    return {"w": jnp.asarray(rng.normal(size=D), jnp.float32)}, {"a": a, "y": y}


def _np_grad(x, a, y):
    return a.T.astype(np.float64) @ (a @ x - y) / len(y)


def _dense_recursion(sched, x0, batch):
    """AD-PSGD event by event (not by waves), dense: X ← M_e X, then the active worker steps
    SGD with momentum on the gradient at the model it read."""
    x = np.tile(np.asarray(x0, np.float64), (W, 1))
    read, mom = x.copy(), np.zeros_like(x)
    for e in range(len(sched)):
        i = sched.worker[e]
        g = _np_grad(read[i], batch["a"][i], batch["y"][i])
        x = sched.event_matrix(e) @ x
        mom[i] = MOMENTUM * mom[i] + g
        x[i] = x[i] - LR * mom[i]
        read[i] = x[i]
    return x, read


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_ad_psgd_equals_the_dense_recursion_over_its_events(lifting, mesh8):
    waves = 20
    params, batch = _problem()
    cluster = _cluster()
    algo = jdo.algorithms.ad_psgd(
        _loss, optax.sgd(LR, momentum=MOMENTUM), T.ring(W), cluster=cluster, seed=5, horizon=waves
    )
    init = jax.jit(jdo.lift(algo.init, lifting, mesh=mesh8, in_axes=(None, 0)))
    step = jax.jit(jdo.lift(algo.step, lifting, mesh=mesh8, in_axes=(0, 0, None)))
    state = init(params, jnp.zeros((W, 2), jnp.uint32))
    for t in range(waves):
        state, metrics = step(state, batch, jax.random.key(t))
        jax.block_until_ready(metrics)
    sched = jdo.algorithms.gossip_simulation_of(algo).schedule(waves, message_bytes=4 * D)
    x, read = _dense_recursion(sched, params["w"], batch)
    np.testing.assert_allclose(state.params["w"], x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.read["w"], read, rtol=1e-5, atol=1e-6)
    stale = ~np.isclose(read, x).all(axis=1)
    assert stale.any()  # some worker's gradient in flight is on a model neighbours changed since
    # versions and the clock follow the schedule
    last = {int(w): e for e, w in enumerate(sched.worker)}
    versions = np.zeros(W, int)
    for e in range(len(sched)):
        versions[[sched.worker[e], sched.partner[e]]] += 1
    np.testing.assert_array_equal(state.version, versions)
    np.testing.assert_array_equal(
        state.read_version, [sched.applied_version[last[w]] if w in last else 0 for w in range(W)]
    )
    times = system.clock.times(metrics["clock"])
    np.testing.assert_allclose(times["time/total"], sched.time[-1], rtol=1e-6)
    comm = [sched.message_s[sched.worker == w].sum() for w in range(W)]
    np.testing.assert_allclose(system.clock.seconds(state.comm), comm, rtol=1e-6)
    np.testing.assert_allclose(metrics["events"], sched.wave_sizes()[-1])


def test_a_single_worker_is_sequential_sgd_and_the_horizon_stops_it():
    params, batch = _problem()
    one = {k: v[:1] for k, v in batch.items()}
    algo = jdo.algorithms.ad_psgd(_loss, optax.sgd(LR), T.complete(1), horizon=5)
    init = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
    step = jax.jit(jax.vmap(algo.step, in_axes=(0, 0, None), axis_name=jdo.WORKERS))
    state = init(params, jnp.zeros((1, 2), jnp.uint32))
    x = np.asarray(params["w"], np.float64)
    for t in range(5):
        state, metrics = step(state, one, jax.random.key(t))
        x = x - LR * _np_grad(x, one["a"][0], one["y"][0])
        assert np.isfinite(metrics["loss"]).all()
    np.testing.assert_allclose(state.params["w"][0], x, rtol=1e-5)
    after, metrics = step(state, one, jax.random.key(5))  # past the horizon: no schedule
    assert np.isnan(metrics["loss"]).all()
    np.testing.assert_array_equal(after.params["w"], state.params["w"])


def test_bad_inputs_name_the_argument():
    with pytest.raises(checks.InvalidArgument, match="undirected") as e:
        jdo.algorithms.ad_psgd(_loss, optax.sgd(LR), T.exponential(W))
    assert e.value.argument == "topology"
    with pytest.raises(checks.InvalidArgument) as e:
        gossip_schedule(T.ring(W), num_waves=3, num_events=3)
    assert e.value.argument == "num_waves"
    with pytest.raises(checks.InvalidArgument) as e:
        jdo.algorithms.ad_psgd(_loss, optax.sgd(LR), T.ring(W), compute_seconds=-1.0)
    assert e.value.argument == "compute_seconds"
    flops = _cluster().__class__(inter=_cluster().inter, compute=system.flops(1e9, 0.5))
    with pytest.raises(checks.InvalidArgument) as e:
        gossip_schedule(T.ring(W), flops, num_waves=3)
    assert e.value.argument == "profile"
    sched = gossip_schedule(T.ring(W), flops, num_waves=3, profile=system.StepProfile(flops=5e6))
    np.testing.assert_allclose(sched.compute_s, 0.01)  # 5e6 / (1e9 * 0.5)


# ----------------------------------------------------------------------------------------------
# Through the runner
# ----------------------------------------------------------------------------------------------


def test_runner_reports_the_schedules_time(make_cfg, tmp_path):
    """Through the runner on a cluster (a slow worker): the step carries its own clock, so the
    synchronous clock wrapper stays off and ``time/total`` is the schedule's."""
    from jdo.train import run
    from jdo.train.clocked import cluster_from_config

    workers, steps = 4, 20
    cfg = make_cfg(
        "task=least_squares",
        "model=linear",
        "optimizer=sgd",
        "optimizer.learning_rate=0.05",
        "algorithm=ad_psgd",
        "topology=ring",
        "cluster=cloud",
        "cluster/compute=fixed",
        "cluster/stragglers=slow_worker",
        f"workers={workers}",
        f"trainer.steps={steps}",
        "trainer.log_every=10",
        "trainer.eval_every=20",
        "trainer.progress=false",
        "checkpoint=none",
    )
    summary = run(cfg, output_dir=str(tmp_path))
    per_worker = jax.tree.leaves(jax.device_get(summary["state"].params))
    nbytes = sum(x[0].size * x.dtype.itemsize for x in per_worker)
    cluster = cluster_from_config(cfg.cluster, workers)
    sched = gossip_schedule(T.ring(workers), cluster, num_waves=steps, message_bytes=nbytes)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "train/loss" in r]
    assert [r["step"] for r in train] == [10, 20]
    assert train[1]["time/total"] == pytest.approx(sched.wave_time()[19], rel=1e-6)
    assert train[0]["time/total"] == pytest.approx(sched.wave_time()[9], rel=1e-6)
    assert train[1]["train/loss"] < train[0]["train/loss"]
    assert np.isfinite(summary["eval/avg_model/loss"])
