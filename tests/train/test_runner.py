"""The runner end to end: accuracy, lifting equivalence, determinism, metrics, bytes."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo.train import build, fit, run
from tests.conftest import compose_cfg

SMALL = (
    "trainer.steps=100",
    "trainer.log_every=25",
    "trainer.eval_every=50",
    "trainer.progress=false",
    "checkpoint=none",
)


def _params(summary):
    return jax.tree.leaves(jax.device_get(summary["state"].params))


def test_default_experiment_reaches_95_percent_on_digits(make_cfg, tmp_path):
    summary = run(make_cfg("trainer.progress=false"), output_dir=str(tmp_path))
    assert summary["eval/avg_model/accuracy"] >= 0.95, summary
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(50, 1001, 50))
    assert "eval/avg_model/accuracy" in lines[4] and "eval/avg_model/accuracy" not in lines[0]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["eval/avg_model/accuracy"] == summary["eval/avg_model/accuracy"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One run of SMALL (vmap, seed 0): the tests below compare other runs with it."""
    out = tmp_path_factory.mktemp("small")
    return run(compose_cfg(*SMALL, "lifting=vmap"), output_dir=str(out))


def test_vmap_and_shard_map_runs_agree(small_run, make_cfg, tmp_path):
    a = small_run
    b = run(make_cfg(*SMALL, "lifting=shard_map"), output_dir=str(tmp_path / "b"))
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert a["bytes/step"] == b["bytes/step"]
    assert a["consensus"] < 1e-10  # all-reduce keeps the workers identical (to rounding)


def test_same_seed_same_run_other_seed_other_run(small_run, make_cfg, tmp_path):
    a, b = small_run, run(make_cfg(*SMALL), output_dir=str(tmp_path / "b"))
    c = run(make_cfg(*SMALL, "seed=1"), output_dir=str(tmp_path / "c"))
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(_params(a)[0], _params(c)[0])


def test_logged_bytes_are_the_gradient_all_reduce(small_run):
    """Operand bytes: the float32 gradient; wire bytes: what a ring all-reduce sends per
    worker, 2(n-1)/n of it."""
    summary = small_run
    num_params = sum(x[0].size for x in _params(summary))
    n = summary["workers"]
    wire = round(2 * (n - 1) / n * 4 * num_params)
    assert summary["bytes/step_payload"] == 4 * num_params
    assert summary["bytes/step_payload_by_kind"]["all-reduce"] == 4 * num_params
    assert summary["bytes/step"] == wire
    assert summary["bytes/total"] == wire * 100
    assert summary["bytes/step_by_kind"]["all-reduce"] == wire


CLOCKED = (
    *(o for o in SMALL if o != "checkpoint=none"),  # this test resumes from a checkpoint
    "algorithm=dpsgd",
    "cluster=cloud",
    "cluster/compute=fixed",  # no profiling compile (the flops model runs in the next test)
    "cluster/stragglers=shifted_exponential",
)


def test_a_clocked_run_reports_time_and_resumes_its_clock_exactly(make_cfg, tmp_path):
    """The clock is in the checkpointed state: 50 steps, then 50 more from the checkpoint,
    give the clock of 100 steps in one go. Its own collectives are not in the bytes."""
    once = run(make_cfg(*CLOCKED, "trainer.steps=100"), output_dir=str(tmp_path / "once"))
    halves = (*CLOCKED, "checkpoint.every=25")
    run(make_cfg(*halves, "trainer.steps=50"), output_dir=str(tmp_path / "twice"))
    resumed = run(make_cfg(*halves, "trainer.steps=100"), output_dir=str(tmp_path / "twice"))
    assert resumed["resumed_from"]["step"] == 50
    for key in ("time/total", "time/min", "time/compute", "time/comm", "time/wait"):
        assert resumed[key] == once[key], key
    assert once["time/total"] > 0 and once["time/wait"] > 0  # stragglers make workers wait
    parts = once["time/compute"] + once["time/comm"] + once["time/wait"]
    assert once["time/min"] <= parts * 100 <= once["time/total"]  # the mean clock
    plain = run(
        make_cfg(*SMALL, "trainer.steps=50", "algorithm=dpsgd"), output_dir=str(tmp_path / "plain")
    )
    assert plain["bytes/step"] == once["bytes/step"] > 0
    assert "time/total" not in plain
    lines = [json.loads(x) for x in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert all(a["time/total"] < b["time/total"] for a, b in zip(lines, lines[1:], strict=False))


@pytest.mark.parametrize("workers", [8, 3])  # 3 does not divide 1024: the remainder is dropped
@pytest.mark.parametrize("task", ["least_squares", "logistic"])
def test_full_batch_gradient_descent_reaches_the_known_optimum(task, workers, make_cfg, tmp_path):
    cfg = make_cfg(
        f"task={task}",
        f"workers={workers}",
        "optimizer=sgd",
        "optimizer.learning_rate=0.5",
        "trainer.batch_size=null",
        "trainer.steps=2000",
        "trainer.log_every=100",
        "trainer.eval_every=1000",
        "trainer.progress=false",
        "checkpoint=none",
    )
    summary = run(cfg, output_dir=str(tmp_path))
    # float32 arithmetic: the distance to the float64 optimum settles at rounding level.
    assert summary["dist_to_opt"] < 1e-4, summary["dist_to_opt"]


def test_workers_do_not_share_batches(make_cfg):
    """Per-worker randomness: fold_in(key, worker) then fold_in(key, step). With every worker
    holding the SAME data and the same params, their first losses differ only if their batches
    do (this fails if the worker is not folded into the batch key)."""
    exp = build(make_cfg())
    same = jdo.data.WorkerData(*(np.repeat(a[:1], len(a), axis=0) for a in exp.data))
    summary = fit(
        dataclasses.replace(exp, data=same),
        workers=8,
        steps=1,
        batch_size=4,
        log_every=1,
        eval_every=1,
        progress=False,
    )
    assert summary["train/loss_min"] < summary["train/loss_max"]


def test_non_finite_loss_stops_the_run(make_cfg, tmp_path):
    cfg = make_cfg("debug=smoke", "optimizer=sgd", "optimizer.learning_rate=1e30")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2 \(workers \[0"):
        run(cfg, output_dir=str(tmp_path))


def test_consensus_distance_matches_numpy():
    from jdo.train import consensus_distance

    xs = {"a": np.random.default_rng(0).normal(size=(4, 3)), "b": np.arange(8.0).reshape(4, 2)}
    expected = sum(np.sum((v - v.mean(0)) ** 2) / 4 for v in xs.values())
    np.testing.assert_allclose(consensus_distance(xs), expected, rtol=1e-6)


QUADRATICS = (
    "task=quadratics",
    "optimizer=sgd",
    "optimizer.learning_rate=0.05",
    "trainer.batch_size=null",
    "trainer.steps=3000",
    "trainer.log_every=500",
    "trainer.eval_every=3000",
    "trainer.progress=false",
    "checkpoint=none",
)


def test_gradient_tracking_from_the_command_line_config(make_cfg, tmp_path):
    gt = run(make_cfg(*QUADRATICS, "algorithm=gradient_tracking", "topology=ring"), str(tmp_path))
    dp = run(make_cfg(*QUADRATICS, "algorithm=dpsgd", "topology=ring"), str(tmp_path / "d"))
    assert gt["dist_to_opt"] < 1e-5 < 1e-2 < dp["dist_to_opt"], (
        gt["dist_to_opt"],
        dp["dist_to_opt"],
    )
    # Ring: every step mixes x and y, 2 ppermutes each, so 4 x the model bytes.
    num_params = 17
    assert gt["bytes/step_by_kind"]["collective-permute"] == 4 * 4 * num_params
    assert dp["bytes/step_by_kind"]["collective-permute"] == 2 * 4 * num_params


def test_push_sum_on_a_directed_star_from_the_config(make_cfg, tmp_path):
    cfg = make_cfg(
        *QUADRATICS,
        "algorithm=push_sum",
        "topology=star",
        "topology.directed=true",
        "task.data.heterogeneity=0.0",
    )
    summary = run(cfg, str(tmp_path))
    # From ||x0 - x*|| ~ 4: a constant step leaves SGP (like D-PSGD) an O(step) bias and the
    # workers a small disagreement (each still pulls towards its own data).
    assert summary["dist_to_opt"] < 1e-2 and summary["consensus"] < 1e-4


def test_topology_size_must_match_workers(make_cfg, tmp_path):
    from jdo.train import ConfigError

    with pytest.raises(ConfigError, match=r"topology.n: must equal workers \(8\), got 4"):
        run(make_cfg("algorithm=dpsgd", "topology.n=4", "debug=smoke"), str(tmp_path))


def test_fit_without_data_passes_no_batch():
    """Tasks that make their own data (RL) give Experiment(data=None): step gets batch=None."""
    import optax

    from jdo.algorithms import Algorithm
    from jdo.train import fit
    from jdo.train.experiment import Experiment

    def init(params, key):
        return {"params": params, "t": jnp.zeros((), jnp.int32)}

    def step(state, batch, key):
        assert batch is None
        grads = jax.tree.map(lambda p: p - 1.0, state["params"])
        params = optax.apply_updates(state["params"], jax.tree.map(lambda g: -0.5 * g, grads))
        return {"params": params, "t": state["t"] + 1}, {"loss": jnp.sum(params["w"] ** 2)}

    algo = Algorithm(init, step, params=lambda s: s["params"])
    exp = Experiment(algo, None, None, {"w": jnp.zeros(3)}, None, None)
    out = fit(
        exp, workers=4, steps=20, batch_size=None, log_every=10, eval_every=10, progress=False
    )
    np.testing.assert_array_equal(out["state"]["t"], np.full(4, 20))
    np.testing.assert_allclose(out["state"]["params"]["w"], 1 - 0.5**20, rtol=1e-6)
    assert out["consensus"] == 0.0


@pytest.mark.slow  # two 50-step runs; tests/transforms/test_faults.py and the clock's tests
# check the parts in the not-slow suite, and the README's commands with faults (link drops under
# D-PSGD, ALIE against a robust aggregator) run from the config in tests/test_readme_commands.py
def test_backup_workers_run_from_the_config_and_reach_the_step_sooner(make_cfg, tmp_path):
    """trainer.backup_workers=2 on a cluster with stragglers drops the two latest workers each
    step, so the same run reaches its step sooner in simulated time, and still learns."""
    clocked = (
        *SMALL,
        "trainer.steps=50",
        "cluster=cloud",
        "cluster/stragglers=shifted_exponential",
    )
    plain = run(make_cfg(*clocked), output_dir=str(tmp_path / "b0"))
    backup = run(make_cfg(*clocked, "trainer.backup_workers=2"), output_dir=str(tmp_path / "b2"))
    assert backup["time/total"] < plain["time/total"]
    assert backup["eval/avg_model/accuracy"] > 0.5
