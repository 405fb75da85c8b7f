"""jdo.asynchrony.schedule against an independent heap-based event simulation."""

import heapq

import numpy as np
import pytest

import jdo.system as system
from jdo import checks
from jdo.asynchrony import schedule, simulate
from jdo.asynchrony.schedule import COMPUTE, straggler_draws

ALPHA, BANDWIDTH, NBYTES = 1e-3, 1e9, 4e5
BASE, SLOW, FACTOR = 0.1, (0, 3), 3.5


def _cluster(stragglers=None, compute=BASE, speeds=None):
    return system.Cluster(
        inter=system.Link(ALPHA, BANDWIDTH),
        compute=system.fixed(compute),
        stragglers=stragglers,
        speeds=speeds,
    )


def _slow_times(workers):
    """c_i for slow_worker(SLOW, FACTOR), in float32 as the model computes it."""
    base = np.float32(BASE)
    return [
        float(base * np.float32(FACTOR) if w in SLOW else base * np.float32(1.0))
        for w in range(workers)
    ]


def reference(c, updates, mode, s=None, k=None, push=0.0):
    """Event-driven simulation with one heap of (time, phase, worker): phase 0 an arrival, 1 a
    completed pull; at one instant every arrival is handled before any read. ``c[w]``: worker
    w's compute time, or its sequence of them (one per gradient it starts)."""
    w_count = len(c)
    started = [0] * w_count
    heap = [(0.0, 1, w) for w in range(w_count)]
    heapq.heapify(heap)
    version, done, read, waiting, held, events = 0, [0] * w_count, [0] * w_count, [], set(), []
    while version < updates:
        t = heap[0][0]
        arrivals = []
        while heap and heap[0][0] == t and heap[0][1] == 0:
            arrivals.append(heapq.heappop(heap)[2])
        groups = [arrivals] if arrivals and mode != "k_async" else []
        if mode == "k_async":
            waiting += arrivals
            while len(waiting) >= k:
                groups.append(waiting[:k])
                waiting = waiting[k:]
        for group in groups:
            if version == updates:
                break
            version += 1
            for w in sorted(group):
                events.append((t, w, read[w], version))
                done[w] += 1
                heapq.heappush(heap, (t + push, 1, w))
        if mode == "ssp":
            for w in sorted(held):
                if done[w] - s <= min(done):
                    held.discard(w)
                    heapq.heappush(heap, (t, 1, w))
        while heap and heap[0][0] == t and heap[0][1] == 1:
            w = heapq.heappop(heap)[2]
            if mode == "ssp" and done[w] - s > min(done):
                held.add(w)
                continue
            read[w] = version
            seconds = c[w] if np.ndim(c[w]) == 0 else c[w][started[w]]
            started[w] += 1
            heapq.heappush(heap, (t + seconds + push, 0, w))
    return events[: sum(1 for e in events if e[3] <= updates)]


@pytest.mark.parametrize(
    "mode,kw",
    [("async", {}), ("ssp", {"s": 0}), ("ssp", {"s": 2}), ("k_async", {"k": 3})],
)
def test_slow_worker_matches_reference(mode, kw):
    workers, updates = 6, 50
    cluster = _cluster(system.slow_worker(list(SLOW), FACTOR))
    events = schedule(
        cluster,
        workers,
        updates,
        mode,
        staleness=kw.get("s"),
        k=kw.get("k"),
        message_bytes=NBYTES,
    )
    push = ALPHA + NBYTES / BANDWIDTH
    want = reference(_slow_times(workers), updates, mode, push=push, **kw)
    assert len(events) >= 50
    assert [(e.worker, e.read_version, e.applied_version) for e in events] == [
        (w, r, a) for _, w, r, a in want
    ]
    np.testing.assert_allclose([e.time for e in events], [e[0] for e in want], rtol=1e-12)
    staleness = [e.staleness for e in events]
    assert staleness == [a - 1 - r for _, _, r, a in want]
    assert max(staleness) > 0 or (mode == "ssp" and kw["s"] == 0)
    assert events[-1].applied_version == updates


@pytest.mark.parametrize("s", [1, 4])
def test_ssp_with_stragglers_matches_reference(s):
    """16 workers, shifted-exponential stragglers (the asynchrony benchmark's setting): every
    worker released from an SSP wait reads the version newest at its release."""
    workers, updates = 16, 300
    cluster = _cluster(system.shifted_exponential(1.0, 0.5))
    events = schedule(cluster, workers, updates, "ssp", staleness=s, message_bytes=NBYTES)
    draws = straggler_draws(cluster, [BASE] * workers, np.arange(2 * updates))
    want = reference(draws, updates, "ssp", s=s, push=ALPHA + NBYTES / BANDWIDTH)
    assert [(e.worker, e.read_version, e.applied_version) for e in events] == [
        (w, r, a) for _, w, r, a in want
    ]
    np.testing.assert_allclose([e.time for e in events], [e[0] for e in want], rtol=1e-12)


@pytest.mark.parametrize("s", [0, 1, 3])
def test_ssp_never_breaks_its_progress_rule(s):
    workers = 5
    cluster = _cluster(system.lognormal(0.8), speeds=(1.0, 0.3, 1.0, 2.0, 1.0))
    events = schedule(cluster, workers, 200, "ssp", staleness=s, message_bytes=NBYTES)
    applied = [
        np.array([e.applied_version for e in events if e.worker == j]) for j in range(workers)
    ]
    seen = [0] * workers  # gradients of each worker before the current one
    for e in events:
        n = seen[e.worker]
        for j in range(workers):  # at the read, every worker had completed >= n - s
            assert np.searchsorted(applied[j], e.read_version, side="right") >= n - s, (e, j)
        seen[e.worker] += 1
    assert len({e.worker for e in events}) == workers


@pytest.mark.parametrize(
    "mode,kw", [("async", {}), ("ssp", {"staleness": 1}), ("k_async", {"k": 4})]
)
def test_equal_compute_times_are_synchronous(mode, kw):
    events = schedule(_cluster(), 4, 10, mode, message_bytes=NBYTES, **kw)
    assert [(e.worker, e.read_version, e.applied_version) for e in events] == [
        (w, u, u + 1) for u in range(10) for w in range(4)
    ]


def test_prefix_and_timeline():
    cluster = _cluster(system.shifted_exponential(1.0, 0.5))
    long = simulate(cluster, 4, 80, "async", message_bytes=NBYTES)
    short = schedule(cluster, 4, 30, "async", message_bytes=NBYTES)
    assert short == [e for e in long.events if e.applied_version <= 30]
    times = long.update_times
    assert np.all(np.diff(times) > 0) and times[-1] == long.events[-1].time
    for seg in long.segments:  # each worker's timeline: contiguous from 0, past the end
        assert seg[0, 0] == 0 and np.all(seg[1:, 0] == seg[:-1, 1]) and seg[-1, 1] >= times[-1]
    gradients = sum(int(np.sum(seg[:, 2] == COMPUTE)) for seg in long.segments)
    assert gradients >= len(long.events)


def test_straggler_draws_equal_the_clocks():
    import jax

    cluster = _cluster(system.shifted_exponential(1.0, 0.5))
    base = [0.1, 0.2, 0.3]
    table = straggler_draws(cluster, base, np.arange(5))
    key = jax.random.key(cluster.seed)
    for w, n in [(0, 0), (1, 3), (2, 4)]:
        want = cluster.stragglers.sample(key, np.int32(w), np.int32(n), np.float32(base[w]))
        assert table[w, n] == float(want)


@pytest.mark.parametrize(
    "kw,argument",
    [
        ({"mode": "sync"}, "mode"),
        ({"mode": "ssp"}, "staleness"),
        ({"mode": "ssp", "staleness": -1}, "staleness"),
        ({"mode": "k_async", "k": 5}, "k"),
        ({"mode": "async", "k": 2}, "k"),
    ],
)
def test_bad_arguments(kw, argument):
    with pytest.raises(checks.ArgumentError) as e:
        schedule(_cluster(), 4, 5, **kw)
    assert e.value.argument == argument


def test_zero_time_gradients_are_refused():
    with pytest.raises(checks.InvalidArgument, match="0 seconds"):
        schedule(system.Cluster(inter=system.Link(0.0, 1e9)), 2, 3)
