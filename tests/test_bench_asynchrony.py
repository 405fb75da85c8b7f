"""experiments/bench/asynchrony.py without training: its command lines compose, the steps it
gives an asynchronous method cover the time budget, and its gradient, staleness, loss and
wire-byte accounting follow the definitions (checked against hand-made runs and against the
event lists of jdo.asynchrony written out here)."""

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from experiments.bench import asynchrony as bench
from jdo import asynchrony, system
from jdo.topology import ring as bench_ring


def test_every_method_composes_a_config():
    with initialize_config_module("jdo.conf", version_base="1.3"):
        # every override key of METHODS (the others repeat them), both straggler settings
        keys = ("sync PS", "SSP s=1", "async + lr/τ", f"DC-ASGD λ={bench.DC_LAMBDA:g}")
        for i, method in enumerate((*keys, "AD-PSGD ring", "D-PSGD ring")):
            stragglers = bench.STRAGGLERS[i % 2]
            cfg = compose(
                "config", overrides=bench.overrides("logistic", method, stragglers, 640, 16)
            )
            assert cfg.trainer.steps == 640 and cfg.trainer.eval_every == 10
            assert cfg.cluster.compute.seconds == bench.COMPUTE_S
            stragglers = cfg.cluster.stragglers
            assert (stragglers or {}).get("_target_") == (
                "jdo.system.shifted_exponential" if i % 2 else None
            )


@pytest.mark.parametrize("seconds", [0.0, 0.95, 1.0, 3.2, 10.0, 99.0])
def test_steps_to_cover_is_the_fewest_whole_intervals_that_reach_the_budget(seconds):
    times = np.cumsum(np.full(40, 0.25))  # step k (1-based) ends at k / 4
    got = bench.steps_to_cover(times, seconds, evals=8)
    reaching = [n for n in range(8, 41, 8) if times[n - 1] >= seconds]
    assert got == (reaching[0] if reaching else 40)


def _cluster(stragglers=None):
    link = system.Link(1e-3, 1e6)
    return system.Cluster(inter=link, compute=system.fixed(0.01), stragglers=stragglers)


def test_async_schedule_accounting_against_the_event_list():
    cluster = _cluster(system.slow_worker([1], 3.0))
    times, grads, stale = bench.method_schedule("async", cluster, 4, 30, 100)
    events = asynchrony.schedule(cluster, 4, 30, "async", message_bytes=100)
    for u in range(30):
        upto = [e for e in events if e.applied_version <= u + 1]
        assert grads[u] == len(upto)
        assert stale[u] == pytest.approx(np.mean([e.staleness for e in upto]))
        assert times[u] == max(e.time for e in upto)
    assert stale[-1] > 0
    # without stragglers every gradient arrives at once: synchronous, W per update, fresh
    times, grads, stale = bench.method_schedule("SSP s=1", _cluster(), 4, 5, 100)
    np.testing.assert_array_equal(grads, 4 * np.arange(1, 6))
    np.testing.assert_array_equal(stale, 0)
    step = 0.01 + 2 * (1e-3 + 100 / 1e6)  # compute, push, pull
    np.testing.assert_allclose(times, 0.01 + 1e-3 + 1e-4 + step * np.arange(5))


def test_gossip_schedule_accounting():
    times, grads, stale = bench.method_schedule("AD-PSGD ring", _cluster(), 6, 12, 100)
    assert np.all(np.diff(times) >= 0) and np.all(np.diff(grads) >= 1)
    events = asynchrony.gossip_schedule(bench_ring(6), _cluster(), num_waves=12, message_bytes=100)
    assert grads[-1] == len(events.time)  # one gradient per event
    assert times[-1] == events.time.max()
    assert stale[-1] == pytest.approx(events.staleness.mean())


def test_gradients_wire_bytes_and_loss_at_the_budget():
    line = {"step": 8, "asynchrony/gradients": 11.0, "bytes/step": 900}
    assert bench.gradients_at("all-reduce SGD", line, 16, None) == 128
    assert bench.gradients_at("async", line, 16, None) == 11.0
    sched = (None, np.array([1, 3, 4, 6, 9, 10, 12, 13]), None)
    assert bench.gradients_at("AD-PSGD ring", line, 16, sched) == 13
    last = {"bytes/step": 900, "bytes/wire_total": 2 * 11 * 68.0, "asynchrony/gradients": 11.0}
    assert bench.wire_per_gradient("D-PSGD ring", last, 16, 68.0) == 900
    assert bench.wire_per_gradient("SSP s=4", last, 16, 68.0) == 136
    assert bench.wire_per_gradient("AD-PSGD ring", last, 16, 68.0) == 136
    lines = [{"time/total": t, bench.METRIC: v} for t, v in [(0.5, 0.9), (1.0, 0.5), (1.5, 0.4)]]
    lines.insert(1, {"time/total": 0.7})  # a log line without an evaluation
    assert bench.loss_at(lines, 1.2) == 0.5 and bench.loss_at(lines, 1.5) == 0.4
    assert bench.loss_at(lines, 0.1) is None


def test_table_marks_a_target_not_reached():
    rows = []
    for method in bench.METHODS:
        for s in bench.STRAGGLERS:
            hit = method != "async"
            rows.append(
                {
                    "problem": "logistic",
                    "method": method,
                    "stragglers": s,
                    "budget": 2.0,
                    "time_to_target": 0.5 if hit else None,
                    "gradients_to_target": 512 if hit else None,
                    "samples": 1024,
                    "loss_at_budget": 0.36,
                    "staleness_mean": 0.0,
                    "wire_bytes_per_gradient": 136.0,
                }
            )
    text = bench.table(rows, "logistic").splitlines()
    assert len(text) == 2 + len(bench.METHODS)
    assert "| async | — | not reached |" in text[2 + list(bench.METHODS).index("async")]
    assert "| 512 (16) |" in text[2]
