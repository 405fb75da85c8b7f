"""The simulated asynchronous parameter server: synchronous SGD bit for bit when every worker
arrives at once, and every stale update against a numpy replay of the same events."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
import jdo.system as system
from jdo import asynchrony
from jdo.lifting import lift

W, N, D, LR = 4, 6, 5, 0.05


def _loss(params, batch, key):
    del key
    r = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return 0.5 * jnp.mean(r**2), {}


def _grad_np(w, b, x, y):
    r = x @ w + b - y
    return x.T @ r / len(y), np.mean(r)


def _data(steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, W, N, D)).astype(np.float32)
    y = rng.normal(size=(steps, W, N)).astype(np.float32)
    return {"x": x, "y": y}


def _params():
    return {"w": np.linspace(-1, 1, D).astype(np.float32), "b": np.float32(0.3)}


def _cluster(stragglers=None):
    return system.Cluster(
        inter=system.Link(1e-3, 1e9), compute=system.fixed(0.1), stragglers=stragglers
    )


def _run(algo, steps, lifting="vmap", mesh=None):
    """``steps`` lifted steps on :func:`_data`; the params after each, and the metrics."""
    data = _data(steps)
    stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (W, *np.shape(a))), t)
    keys = jax.random.split(jax.random.key(0), W)
    init = lift(algo.init, lifting=lifting, mesh=mesh, in_axes=(0, 0))
    step = jax.jit(lift(algo.step, lifting=lifting, mesh=mesh, in_axes=(0, 0, 0)))
    state = jax.jit(init)(stack(_params()), keys)
    history, metrics = [], []
    for t in range(steps):
        state, m = step(state, jax.tree.map(lambda a, t=t: a[t], data), keys)
        history.append(jax.tree.map(np.asarray, algo.params(state)))
        metrics.append(m)
    return history, metrics


def _mesh():
    auto = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((W,), (jdo.WORKERS,), axis_types=auto, devices=jax.devices()[:W])


def test_equal_compute_times_are_allreduce_sgd_bit_for_bit():
    steps, opt = 6, optax.adam(0.1)
    algo = asynchrony.algorithm(_loss, opt, mode="async", cluster=_cluster(), num_updates=steps)
    got, _ = _run(algo, steps)
    want, _ = _run(jdo.algorithms.allreduce_sgd(_loss, opt), steps)
    for a, b in zip(got, want, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def _numpy_replay(events, steps, dc_lambda=0.0, inverse=False, max_staleness=None):
    """Plain SGD replaying ``events`` in float64: version history, per update the mean of the
    (compensated, scaled) gradients each computed on the version its worker read."""
    data = _data(steps)
    p = _params()
    versions = [(p["w"].astype(np.float64), np.float64(p["b"]))]
    by_update = collections.defaultdict(list)
    for e in events:
        by_update[e.applied_version - 1].append(e)
    for u in range(steps):
        w, b = versions[u]
        grads = []
        for e in by_update[u]:
            tau = e.staleness
            if max_staleness is not None and tau > max_staleness:
                continue
            w_r, b_r = versions[e.read_version]
            gw, gb = _grad_np(w_r, b_r, data["x"][u, e.worker], data["y"][u, e.worker])
            gw = gw + dc_lambda * gw * gw * (w - w_r)
            gb = gb + dc_lambda * gb * gb * (b - b_r)
            scale = 1.0 / max(tau, 1) if inverse else 1.0
            grads.append((gw * scale, gb * scale))
        if grads:
            w = w - LR * np.mean([g[0] for g in grads], axis=0)
            b = b - LR * np.mean([g[1] for g in grads])
        versions.append((w, b))
    return versions[1:]


SLOW = system.slow_worker([0], 2.5)


@pytest.mark.parametrize(
    "lifting,mode,kw,corr",
    [
        ("vmap", "async", {}, {}),
        ("vmap", "k_async", {"k": 2}, {"dc_lambda": 0.5}),
        ("vmap", "ssp", {"staleness": 1}, {"lr_scaling": "inverse", "dc_lambda": 0.5}),
        ("shard_map", "async", {}, {"lr_scaling": "inverse", "dc_lambda": 0.5}),
        ("vmap", "async", {}, {"max_staleness": 1}),
    ],
)
def test_stale_updates_equal_a_numpy_replay(lifting, mode, kw, corr):
    steps = 14
    algo = asynchrony.algorithm(
        _loss,
        optax.sgd(LR),
        mode=mode,
        cluster=_cluster(SLOW),
        num_updates=steps,
        **kw,
        **corr,
    )
    got, metrics = _run(algo, steps, lifting, _mesh() if lifting == "shard_map" else None)
    events = asynchrony.schedule(
        _cluster(SLOW),
        W,
        steps,
        mode,
        message_bytes=4 * (D + 1),
        k=kw.get("k"),
        staleness=kw.get("staleness"),
    )
    assert max(e.staleness for e in events) >= 2
    want = _numpy_replay(
        events,
        steps,
        corr.get("dc_lambda", 0.0),
        corr.get("lr_scaling") == "inverse",
        corr.get("max_staleness"),
    )
    for u, (a, (w, b)) in enumerate(zip(got, want, strict=True)):
        for i in range(W):  # every worker holds the server's params
            np.testing.assert_allclose(a["w"][i], w, rtol=1e-5, atol=1e-6, err_msg=f"update {u}")
            np.testing.assert_allclose(a["b"][i], b, rtol=1e-5, atol=1e-6)
    record = asynchrony.stats_record(np.asarray(metrics[-1]["asynchrony"])[0])
    kept = [e for e in events if corr.get("max_staleness") is None or e.staleness <= 1]
    assert record["asynchrony/updates"] == steps
    assert record["asynchrony/gradients"] == len(kept)
    assert record["asynchrony/dropped"] == len(events) - len(kept)
    # every gradient that reached the server (dropped ones too) is one push and one pull
    assert record["asynchrony/messages"] == 2 * len(events)
    assert record["bytes/wire_total"] == 2 * len(events) * 4 * (D + 1)
    assert record["bytes/wire_per_update"] == record["bytes/wire_total"] / steps
    counts = collections.Counter(e.staleness for e in kept)
    for k in range(max(counts) + 1):
        assert record[f"staleness/{k}"] == counts.get(k, 0)
    np.testing.assert_allclose(
        record["staleness/mean"], np.mean([e.staleness for e in kept]), rtol=1e-6
    )
    times = system.clock.times(np.asarray(metrics[-1]["clock"]))
    np.testing.assert_allclose(times["time/total"], events[-1].time, rtol=1e-7)
    total = sum(times[f"time/{k}"] for k in ("compute", "comm", "wait")) * steps
    np.testing.assert_allclose(total, events[-1].time, rtol=1e-5)


def test_async_with_no_staleness_is_sequential_sgd_on_the_arrival_order():
    steps = 12
    events = asynchrony.schedule(_cluster(SLOW), W, steps, "async", message_bytes=24)
    fresh = [e._replace(read_version=e.applied_version - 1) for e in events]
    algo = asynchrony.replay(_loss, optax.sgd(LR), asynchrony.make_plan(fresh, W))
    got, _ = _run(algo, steps)
    data = _data(steps)
    p = _params()
    w, b = p["w"].astype(np.float64), np.float64(p["b"])
    for u in range(steps):  # one SGD step per arrival instant, on its concatenated batches
        group = [e.worker for e in events if e.applied_version == u + 1]
        x = np.concatenate([data["x"][u, i] for i in group])
        y = np.concatenate([data["y"][u, i] for i in group])
        gw, gb = _grad_np(w, b, x, y)
        w, b = w - LR * gw, b - LR * gb
        np.testing.assert_allclose(got[u]["w"][0], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[u]["b"][0], b, rtol=1e-5, atol=1e-6)
    assert {len([e for e in events if e.applied_version == u + 1]) for u in range(steps)} != {W}


def test_wire_traffic_counts_a_push_and_a_pull_per_gradient_that_reached_the_server():
    E = asynchrony.Event
    # update 1: workers 0 and 1 together; update 2: worker 2 (stale 1, dropped at 0);
    # update 3: worker 0 again (read version 1: stale 1, dropped)
    events = [E(1.0, 0, 0, 1), E(1.0, 1, 0, 1), E(2.0, 2, 0, 2), E(3.0, 0, 1, 3)]
    nbytes = 2**26 + 3  # beyond float32's exact integers: kept exact as a hi + lo pair
    plan = asynchrony.make_plan(events, 3, max_staleness=0, message_bytes=nbytes)
    records = [asynchrony.stats_record(row) for row in plan.stats]
    assert [r["asynchrony/messages"] for r in records] == [4, 6, 8]
    assert [r["asynchrony/dropped"] for r in records] == [0, 1, 2]
    assert [r["bytes/wire_total"] for r in records] == [4 * nbytes, 6 * nbytes, 8 * nbytes]
    assert records[-1]["bytes/wire_per_update"] == 8 * nbytes / 3
    unknown = asynchrony.stats_record(asynchrony.make_plan(events, 3).stats[-1])
    assert unknown["asynchrony/messages"] == 8 and "bytes/wire_total" not in unknown


def test_corrections_against_their_formulas():
    rng = np.random.default_rng(1)
    g, w, w_tau = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    dc = asynchrony.dc_asgd(0.7)
    out, _ = dc.update({"a": g}, dc.init({"a": w}), {"a": w}, stale_params={"a": w_tau})
    np.testing.assert_allclose(out["a"], g + 0.7 * g * g * (w - w_tau), rtol=1e-6)
    lr = asynchrony.staleness_aware_lr()
    for tau, scale in [(0, 1.0), (1, 1.0), (4, 0.25)]:
        out, _ = lr.update({"a": g}, lr.init(None), staleness=jnp.int32(tau))
        np.testing.assert_allclose(out["a"], g * scale, rtol=1e-6)
    chained = optax.chain(asynchrony.dc_asgd(0.7), asynchrony.staleness_aware_lr())
    out, _ = chained.update(
        {"a": g}, chained.init({"a": w}), {"a": w}, staleness=4, stale_params={"a": w_tau}
    )
    np.testing.assert_allclose(out["a"], (g + 0.7 * g * g * (w - w_tau)) / 4, rtol=1e-6)


def test_bad_arguments_and_unbound_horizon():
    from jdo import checks

    with pytest.raises(checks.InvalidArgument) as e:
        asynchrony.algorithm(_loss, optax.sgd(0.1), mode="async")
    assert e.value.argument == "cluster"
    with pytest.raises(checks.InvalidArgument) as e:
        asynchrony.algorithm(
            _loss, optax.sgd(0.1), mode="async", cluster=_cluster(), lr_scaling="x"
        )
    assert e.value.argument == "lr_scaling"
    algo = asynchrony.algorithm(_loss, optax.sgd(0.1), mode="async", cluster=_cluster())
    assert asynchrony.simulation_of(algo) is not None
    assert asynchrony.simulation_of(jdo.algorithms.allreduce_sgd(_loss, optax.sgd(0.1))) is None
    with pytest.raises(checks.InvalidArgument, match="num_updates"):
        _run(algo, 1)
    bound = asynchrony.simulation_of(algo).bind(3)
    history, _ = _run(bound, 4)  # past the horizon nothing changes
    np.testing.assert_array_equal(history[2]["w"], history[3]["w"])
