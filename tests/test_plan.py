"""The planner (jdo.train.plan): its predicted seconds per step against the runner's clock and
a hand-computed α–β formula, a stable ranking, the --json schema, and bad input."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import scipy.stats

from jdo.train import plan

# Edge devices of different speeds, with random stragglers: the hardest case for the clock.
BASE = (
    "task=logistic",
    "workers=4",
    "optimizer=sgd",
    "optimizer.learning_rate=0.5",
    "cluster=edge",
    "cluster/compute=fixed",
    "cluster/stragglers=shifted_exponential",
)
NAMES = "allreduce_sgd,local_sgd_h4,dpsgd_ring"
KEYS = ("algorithm", "seconds_per_step", "bytes_per_step", "predicted_time_to_target", "rank")


def _plan(path, *more):
    argv = [*BASE, "--target", "0.36", "--algorithms", NAMES]
    argv += ["--pilot-steps", "64", "--every", "16", "--json", str(path), *more]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert plan.main(argv) == 0
    with open(path, encoding="utf-8") as f:
        return json.load(f), out.getvalue()


@pytest.fixture(scope="module")
def two_plans(tmp_path_factory):
    """The same plan twice, in-process, as ``python -m experiments.plan`` runs it; the second
    also runs its top 2 for 64 steps (the pilots' own length: their runs again)."""
    tmp = tmp_path_factory.mktemp("plan")
    return _plan(tmp / "a.json"), _plan(tmp / "b.json", "--run-top", "2", "--max-steps", "64")


@pytest.mark.slow  # moved out of the not-slow suite (its 15-minute budget); CI runs it
def test_predicted_seconds_per_step_equal_the_runners_clock(two_plans):
    """The prediction (the clocked step stepped alone, 64 steps) against the pilot's own clock
    (jdo.train.run, 64 steps): same model, same straggler draws, to 1e-6."""
    records, out = two_plans[0]
    assert "Recommended: " in out and records[0]["algorithm"] in out
    assert {r["algorithm"] for r in records} == set(NAMES.split(","))
    for r in records:
        assert r["seconds_per_step"] == pytest.approx(r["pilot_seconds_per_step"], rel=1e-6)
    # the latest clock: above the workers' mean compute (slow devices wait for the others)
    assert all(r["seconds_per_step"] > r["compute_s_per_step"] for r in records)


@pytest.mark.slow  # moved out of the not-slow suite (its 15-minute budget); CI runs it
def test_ranking_is_stable_and_the_json_has_the_names_tools_use(two_plans):
    (first, _), (second, _) = two_plans
    for records in (first, second):
        assert [r["rank"] for r in records] == list(range(1, len(records) + 1))
        for r in records:
            assert set(KEYS) <= set(r)
            assert isinstance(r["algorithm"], str) and isinstance(r["rank"], int)
            assert r["seconds_per_step"] > 0 and r["bytes_per_step"] >= 0
            t = r["predicted_time_to_target"]
            assert t is None or t > 0
    assert [r["algorithm"] for r in first] == [r["algorithm"] for r in second]
    times = lambda rs: [r["predicted_time_to_target"] for r in rs]
    assert times(first) == times(second)
    assert [r["achieved_rank"] is not None for r in second] == [True, True, False]
    assert [r["achieved_rank"] for r in first] == [None] * 3


@pytest.mark.slow  # moved out of the not-slow suite (its 15-minute budget); CI runs it
def test_run_top_reads_the_crossing_of_the_pilots_own_run(two_plans):
    """``--run-top 2 --max-steps 64`` reruns the two best pilots: the same seeds give the same
    crossing step as their pilots; Spearman's rho is printed."""
    records, out = two_plans[1]
    assert "Spearman's rho" in out
    for r in records[:2]:
        if r["prediction_from"] == "pilot":
            assert r["achieved_steps_to_target"] == r["predicted_steps_to_target"]
        else:
            assert r["achieved_time_to_target"] is None
    local = next(r for r in records if r["algorithm"] == "local_sgd_h4")
    assert local["bytes_per_step"] == local["bytes_per_communicating_step"] / 4


def test_seconds_per_step_is_the_alpha_beta_formula():
    """All-reduce SGD and local SGD (H=4) on cloud links, 4 workers, 0.01 s of compute: the
    ring all-reduce of the 17 float32 parameters costs 2(n-1) α + 2 (n-1)/n S / B, every step
    or every 4th."""
    alpha, bandwidth, n, s, compute = 1e-4, 3.125e9, 4, 17 * 4, 0.01
    ring = 2 * (n - 1) * alpha + 2 * (n - 1) / n * s / bandwidth
    base = [*BASE[:4], "cluster=cloud", "cluster/compute=fixed"]
    for name, expected in (("allreduce_sgd", compute + ring), ("local_sgd_h4", compute + ring / 4)):
        cost = plan.step_cost(plan.compose(plan.run_overrides(base, name, 64, 16)))
        assert cost.seconds_per_step == pytest.approx(expected, rel=1e-6)
        assert cost.bytes_communicating == round(2 * (n - 1) / n * s)


def test_fit_curve_recovers_a_power_law_and_its_crossing():
    steps = np.arange(8, 65, 8, dtype=np.float64)
    a, b = 0.3, 2.0  # p: a point of the fit's grid (0.05 * 80 ** (k / 199), k = 150)
    p = float(np.geomspace(0.05, 4.0, 200)[150])
    fit = plan.fit_curve(steps, a + b * steps**-p)
    assert fit == pytest.approx((a, b, p), rel=1e-6)
    target = 0.31  # crossed at (b / 0.01) ** (1 / p) steps
    assert plan.steps_to_target(fit, target) == pytest.approx(200 ** (1 / p), rel=1e-5)
    assert plan.steps_to_target(fit, 0.29) == math.inf  # below the floor
    assert plan.fit_curve(steps, 1.0 + 1e-3 * steps)[1] == 0.0  # rising: no decreasing fit


def test_spearman_against_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 6).astype(float), rng.normal(size=6)
        if np.ptp(x) == 0:
            continue
        assert plan.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    assert plan.spearman([1.0, 2.0, math.inf], [3.0, math.inf, math.inf]) == pytest.approx(
        scipy.stats.spearmanr([1, 2, 3], [1, 2.5, 2.5])[0]
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["task=logistic", "cluster=cloud"], "--target"),
        (["cluster=cloud", "--target", "0.3", "--algorithms", "allreduce_sgd,sgd9"], "'sgd9'"),
        (["algorithm=dpsgd", "cluster=cloud", "--target", "0.3"], "--algorithms"),
        (["cluster=cloud", "--target", "0.3", "--pilot-steps", "10"], "--pilot-steps"),
        (["cluster=cloud", "--target", "0.3", "--bogus"], "--bogus"),
        (["task=logistic", "--target", "0.3", "--algorithms", "allreduce_sgd"], "cluster"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(argv, says, capsys):
    assert plan.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    assert captured.out == ""
