"""The planner: which algorithm reaches a target loss first on a simulated cluster.

    python -m experiments.plan task=logistic workers=16 cluster=cloud --target 0.36
    jdo-plan task=digits model=mlp workers=16 cluster=edge --target 0.3 --run-top 3

For every algorithm of a set (:data:`ALGORITHMS`, ``--algorithms``) it

1. **predicts the simulated seconds per step** with the run's own clock model
   (:mod:`jdo.system.clock`): the clocked step (:func:`jdo.train.clocked.clock_for`: compute
   from the cluster's compute model, e.g. XLA's FLOP count, then every collective priced on the
   cluster's links) is stepped alone, without the runner, and the latest worker's clock after
   the pilot's length is divided by it. Stragglers are drawn with the run's own seeds
   (``fold_in(seed, worker, step)``), so the prediction is what a run of that length measures
   (not an expectation over draws: the same draws); without stragglers and with equal devices
   it is the same for any whole number of the algorithm's periods (local SGD's H, DiLoCo's H);
   gossip among devices of different speeds has a start-up transient, which is why the
   length is the run's;
2. **counts bytes per step** from the step's compiled HLO, as the runner does
   (``bytes/step``: a communicating step; ``bytes/step_quiet``: the others), and reports their
   mean over the pilot's steps (communicating: those whose clock paid for a collective);
3. **runs a short pilot** through the real runner (:func:`jdo.train.run`, seeds fixed,
   ``checkpoint=none``) and fits its loss curve ``loss(s) = a + b s^-p`` over steps ``s``
   (:func:`fit_curve`); the predicted steps to the target are where the fit crosses it
   (never, if the target is below the fitted floor ``a``), or the pilot's own first crossing
   if it got there. The curve in steps does not depend on the cluster (the clock only observes
   a run), so the predicted time to target is the clock model's time at that step: the same
   stepping, carried on to it (:meth:`StepCost.time_at`);
4. ranks the algorithms by predicted time to target and says which it recommends and why.

``--run-top K`` runs the K best to the target for ``--max-steps`` steps (the runner has no
early stop) and reads the time the target was first crossed from ``metrics.jsonl``
(``time/total``, the latest worker's clock) and prints predicted vs achieved rank and time,
with Spearman's rank correlation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

# name -> Hydra overrides. Plain SGD-style settings come from the user's overrides. The benchmark
# experiments.bench.time_to_target runs these same overrides for the methods it shares.
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "allreduce_sgd": ("algorithm=allreduce_sgd",),
    "local_sgd_h4": ("algorithm=local_sgd", "algorithm.every=4"),
    "local_sgd_h16": ("algorithm=local_sgd", "algorithm.every=16"),
    "dpsgd_ring": ("algorithm=dpsgd", "topology=ring"),
    "choco_sgd_topk": (
        "algorithm=choco_sgd",
        "topology=ring",
        "compression=top_k",
        "compression.ratio=0.01",
        "algorithm.gamma=0.05",
    ),
    "compressed_sgd_topk": (
        "algorithm=compressed_sgd",
        "compression=top_k",
        "compression.ratio=0.01",
    ),
    "powersgd": ("algorithm=powersgd",),
    "diloco": ("algorithm=diloco",),
    "parameter_server": ("algorithm=parameter_server",),
}
DEFAULT_SET = (
    "allreduce_sgd",
    "local_sgd_h4",
    "local_sgd_h16",
    "dpsgd_ring",
    "choco_sgd_topk",
    "diloco",
)
BASELINE = "allreduce_sgd"  # what the recommendation's saving is measured against
PERIOD_KEYS = ("every", "sync_every", "gossip_every", "local_steps", "group_every")
MAX_TRACE = 32  # the clock is stepped for at most this many times the run's length


class PlanError(ValueError):
    """Bad planner input: the message is one line naming the option."""


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def compose(overrides: Sequence[str]):
    """The config ``jdo-train <overrides>`` runs (``pkg://jdo.conf``, as the CLI composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import jdo.conf  # noqa: F401 - the ${jdo_run_id:} resolver

    with initialize_config_module("jdo.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def check_algorithms(names: Sequence[str]) -> tuple[str, ...]:
    """The algorithm names, checked against :data:`ALGORITHMS`."""
    names = tuple(n.strip() for n in names if n.strip())
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
        what = f"unknown algorithm {unknown[0]!r}" if unknown else "no algorithm given"
        raise PlanError(f"--algorithms: {what}; choose from {', '.join(ALGORITHMS)}")
    if len(set(names)) != len(names):
        raise PlanError("--algorithms: an algorithm is named twice")
    return names


def check_base(overrides: Sequence[str]) -> tuple[str, ...]:
    """The user's Hydra overrides: the algorithm set chooses ``algorithm``, ``topology`` and
    ``compression``; the planner chooses the run length and the logging cadence."""
    owned = ("algorithm", "trainer.steps", "trainer.log_every", "trainer.eval_every")
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item:
            raise PlanError(f"{item}: not a Hydra override (key=value) nor a known option")
        if key in owned or key.startswith("algorithm."):
            raise PlanError(f"{key}: set by the planner; choose algorithms with --algorithms")
    return tuple(overrides)


def run_overrides(base: Sequence[str], name: str, steps: int, every: int) -> list[str]:
    """What one run of ``name`` composes: the user's overrides, the algorithm's, the run's
    length and cadence (log and evaluate every ``every`` steps), no checkpoint, no bar."""
    return [
        *base,
        *ALGORITHMS[name],
        f"trainer.steps={steps}",
        f"trainer.log_every={every}",
        f"trainer.eval_every={every}",
        "trainer.progress=false",
        "checkpoint=none",
    ]


def period_of(cfg) -> int:
    """The algorithm's communication period: the lcm of its ``every``-like settings
    (:data:`PERIOD_KEYS`; 1 for an algorithm that communicates every step)."""
    node = cfg.get("algorithm") or {}
    values = [node.get(k) for k in PERIOD_KEYS if k in node]
    return math.lcm(1, *[int(v) for v in values if isinstance(v, int) and v > 0])


# ----------------------------------------------------------------------------------------------
# Seconds and bytes per step
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepCost:
    """The clock model of one run (seconds simulated; bytes per worker).

    ``clock[k]``: the latest worker's clock after step ``k + 1`` (``time/total``), for
    ``len(clock) >= steps`` steps; ``seconds_per_step`` is ``clock[steps - 1] / steps``, the
    mean over the run's own length ``steps``."""

    seconds_per_step: float
    bytes_per_step: float  # mean over the run's steps
    bytes_communicating: int  # the runner's bytes/step
    bytes_quiet: int  # the runner's bytes/step_quiet
    period: int
    steps: int
    compute_s: float  # compute seconds per step, mean over workers (stragglers included)
    comm_s: float  # comm seconds per step, mean over workers
    clock: np.ndarray = dataclasses.field(repr=False, default=None)

    def time_at(self, step: float) -> float:
        """Simulated seconds after ``step`` steps (interpolated between whole steps; past the
        traced ones, extended at the slope of the last quarter of the trace)."""
        if not math.isfinite(step):
            return math.inf
        n = len(self.clock)
        if step > n:
            q = max(self.period, (n // 4) // self.period * self.period)
            slope = (self.clock[-1] - self.clock[-1 - q]) / q if q < n else self.clock[-1] / n
            return float(self.clock[-1] + (step - n) * slope)
        return float(np.interp(step, np.arange(n + 1), np.concatenate([[0.0], self.clock])))


def _built(cfg):
    """``(exp, clock, cluster, container)`` of a config, as :func:`jdo.train.run` builds
    them."""
    from omegaconf import OmegaConf

    from jdo.train.builder import build
    from jdo.train.clocked import clocked_experiment, cluster_from_config
    from jdo.train.config import validate

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    validate(container)
    cluster = cluster_from_config(cfg.get("cluster"), container["workers"])
    if cluster is None:
        raise PlanError("cluster: the planner needs a cluster (cluster=datacenter, cloud, edge)")
    exp = build(cfg, cluster=cluster)
    trainer = container["trainer"]
    exp, clock = clocked_experiment(
        exp, cluster, container["workers"], trainer["batch_size"], trainer["steps"]
    )
    if clock is None:
        raise PlanError(
            f"algorithm: {cfg.algorithm._target_} runs on its own event schedule; the planner "
            "prices synchronous algorithms"
        )
    return exp, clock, cluster, container


def step_cost(cfg, horizon: float = 0) -> StepCost:
    """Predicted seconds and bytes per step of the run ``cfg`` describes (see the module
    docstring): its clocked step stepped alone for its ``trainer.steps`` steps, or up to
    ``horizon`` (at most :data:`MAX_TRACE` times as many)."""
    from jdo.system import clock as sim_clock

    exp, clock, cluster, container = _built(cfg)
    workers, trainer = container["workers"], container["trainer"]
    steps, period = int(trainer["steps"]), period_of(cfg)
    length = steps
    if math.isfinite(horizon) and horizon > steps:
        length = min(int(math.ceil(horizon)), MAX_TRACE * steps)
    algo = exp.algorithm._replace(cohort=None)
    vectors = np.asarray(
        _clock_trace(clock(algo), exp, workers, trainer["batch_size"], length, cfg.seed)
    )
    final = sim_clock.times(vectors[steps - 1])
    talking = int(np.count_nonzero(_comm_per_step(vectors)[:steps] > 0))
    busy, quiet = _traffic(algo, exp, workers, trainer["batch_size"], cluster)
    i = sim_clock.VECTOR.index
    now = vectors[:, :, i("now_hi")].astype(np.float64) + vectors[:, :, i("now_lo")]
    return StepCost(
        seconds_per_step=final["time/total"] / steps,
        bytes_per_step=(talking * busy + (steps - talking) * quiet) / steps,
        bytes_communicating=busy,
        bytes_quiet=quiet,
        period=period,
        steps=steps,
        compute_s=final["time/compute"],
        comm_s=final["time/comm"],
        clock=now.max(axis=1),
    )


def _clock_trace(algo, exp, workers: int, batch_size, steps: int, seed: int):
    """``[steps, W, 9]``: every worker's clock (:func:`jdo.system.clock.as_vector`) after
    each of ``steps`` steps of ``algo`` (clocked), lifted with ``vmap`` on one device and keyed
    as the runner keys them (:func:`jdo.train.program.worker_step`)."""
    import jax
    import jax.numpy as jnp

    from jdo._axis import WORKERS
    from jdo.train.program import worker_step

    init_key, key = jax.random.split(jax.random.key(seed))
    keys = jax.random.split(init_key, workers)
    init = jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS)
    step = jax.vmap(
        functools.partial(worker_step, algo, batch_size),
        in_axes=(0, 0, None, None),
        axis_name=WORKERS,
    )
    data = tuple(exp.data) if exp.data is not None else ()

    @jax.jit
    def trace(params, keys, data, key):
        def body(state, t):
            state, metrics = step(state, data, key, t)
            return state, metrics["clock"]

        return jax.lax.scan(body, init(params, keys), jnp.arange(steps, dtype=jnp.int32))[1]

    return trace(exp.params, keys, data, key)


def _comm_per_step(vectors: np.ndarray) -> np.ndarray:
    """``[steps]``: the latest worker's comm seconds spent in each step."""
    from jdo.system import clock as sim_clock

    i = sim_clock.VECTOR.index
    comm = vectors[:, :, i("comm_hi")].astype(np.float64) + vectors[:, :, i("comm_lo")]
    return np.diff(comm.max(axis=1), prepend=0.0)


def _traffic(algo, exp, workers: int, batch_size, cluster) -> tuple[int, int]:
    """``(communicating, quiet)`` wire bytes one worker sends per step, read from the step's
    HLO as :func:`jdo.train.program.compile_program` reads them."""
    import jax
    import jax.numpy as jnp

    from jdo import comm
    from jdo._axis import WORKERS
    from jdo.train.program import step_traffic, worker_step

    one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
    keys = jax.random.split(jax.random.key(0), workers)
    state = jax.eval_shape(
        jax.vmap(algo.init, in_axes=(None, 0), axis_name=WORKERS), exp.params, keys
    )
    data = tuple(exp.data) if exp.data is not None else ()
    hlo = comm.worker_hlo(
        functools.partial(worker_step, algo, batch_size),
        workers,
        one(state),
        one(data),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
        in_axes=(0, 0, None, None),
        platform=jax.default_backend(),
    )
    ops = lambda which: comm.hlo_collective_ops(hlo, which, num_devices=workers)
    busy = sum(step_traffic(ops("max"), cluster)[0].values())
    quiet = sum(step_traffic(ops("min"), cluster)[0].values())
    return int(busy), int(quiet)


# ----------------------------------------------------------------------------------------------
# Pilot runs and the loss curve
# ----------------------------------------------------------------------------------------------


def run_metrics(cfg) -> list[dict]:
    """``metrics.jsonl`` of one :func:`jdo.train.run` of ``cfg`` (a temporary run directory)."""
    from jdo.train.runner import run

    with tempfile.TemporaryDirectory(prefix="jdo-plan-") as out:
        run(cfg, output_dir=out)
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def curve(lines: Sequence[Mapping], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, times, values)`` of the lines that hold ``metric`` (``times``: the latest
    worker's simulated clock, ``time/total``)."""
    rows = [x for x in lines if metric in x and np.isfinite(x[metric])]
    if not rows:
        raise PlanError(f"--metric: the runs log no {metric!r} (an eval/... or train/... key)")
    as_array = lambda key: np.array([x.get(key, np.nan) for x in rows], np.float64)
    return as_array("step"), as_array("time/total"), as_array(metric)


def first_crossing(steps, times, values, target: float) -> tuple[float, float] | None:
    """``(step, time)`` of the first logged value ``<= target`` (None: never)."""
    hit = np.flatnonzero(np.asarray(values) <= target)
    return (float(steps[hit[0]]), float(times[hit[0]])) if hit.size else None


def fit_curve(steps, values) -> tuple[float, float, float]:
    r"""Least-squares fit of the power law :math:`v(s) = a + b\,s^{-p}` to a loss curve.

    SGD's loss falls towards a floor as a power of the steps taken (O(1/t) on strongly convex
    problems, Bottou, Curtis & Nocedal 2018; power-law learning curves, Hestness et al. 2017).
    For each exponent :math:`p` on a log grid from 0.05 to 4 (200 points), :math:`(a, b)` is
    the linear least-squares solution; the :math:`(a, b, p)` with the smallest squared error
    among those with :math:`b > 0` (a decreasing curve) wins. Returns ``(a, b, p)``;
    ``b = 0`` when no decreasing fit exists (its floor ``a`` is then the curve's mean). (On
    the pilots of the benchmark, 64 steps, this predicted the steps to target far better than
    :math:`a + b e^{-cs}`, whose floor sat above targets the runs reached.)"""
    s, v = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    best, result = np.inf, (float(np.mean(v)), 0.0, 0.0)
    for p in np.geomspace(0.05, 4.0, 200):
        basis = np.stack([np.ones_like(s), s**-p], axis=1)
        (a, b), *_ = np.linalg.lstsq(basis, v, rcond=None)
        err = float(np.sum((basis @ (a, b) - v) ** 2))
        if b > 0 and err < best:
            best, result = err, (float(a), float(b), float(p))
    return result


def steps_to_target(fit: tuple[float, float, float], target: float) -> float:
    """Where the fitted curve reaches ``target``: :math:`(b / (T - a))^{1/p}`; ``inf`` when
    the target lies at or below the fitted floor ``a``."""
    a, b, p = fit
    if b <= 0 or target <= a:
        return math.inf
    return (b / (target - a)) ** (1.0 / p)


@dataclasses.dataclass
class Candidate:
    """One algorithm's prediction (and, after ``--run-top``, what it achieved)."""

    algorithm: str
    cost: StepCost
    predicted_steps: float
    source: str  # "pilot": the pilot crossed the target; "fit": extrapolated
    fit: tuple[float, float, float]
    pilot_steps: int
    pilot_seconds_per_step: float  # the pilot's own clock: time/total / steps
    pilot_final: float  # the metric at the pilot's end
    rank: int = 0
    achieved_time: float | None = None
    achieved_steps: float | None = None
    achieved_rank: int | None = None

    @property
    def predicted_time(self) -> float:
        """The clock model's time at the predicted step (:meth:`StepCost.time_at`)."""
        return self.cost.time_at(self.predicted_steps)


def plan_one(base, name: str, target: float, metric: str, pilot_steps: int, every: int):
    """:class:`Candidate` of ``name``: its step cost and its pilot's extrapolated curve."""
    overrides = run_overrides(base, name, pilot_steps, every)
    lines = run_metrics(compose(overrides))
    steps, times, values = curve(lines, metric)
    fit = fit_curve(steps, values)
    hit = first_crossing(steps, times, values, target)
    predicted_steps = hit[0] if hit else steps_to_target(fit, target)
    return Candidate(
        algorithm=name,
        cost=step_cost(compose(overrides), horizon=predicted_steps),
        predicted_steps=predicted_steps,
        source="pilot" if hit else "fit",
        fit=fit,
        pilot_steps=pilot_steps,
        pilot_seconds_per_step=float(lines[-1]["time/total"]) / float(lines[-1]["step"]),
        pilot_final=float(values[-1]),
    )


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Sorted by predicted time to target (ties: fewer seconds per step first), ``rank``
    1, 2, ... set."""
    order = sorted(candidates, key=lambda c: (c.predicted_time, c.cost.seconds_per_step))
    for i, c in enumerate(order):
        c.rank = i + 1
    return order


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` (ties get their mean rank; ``inf`` ties last)."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v), np.float64)
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        same = v == value
        r[same] = r[same].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (mean-tie) ranks; nan when
    either side has a single rank."""
    rx, ry = ranks(x), ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def achieve(base, c: Candidate, target: float, metric: str, max_steps: int, every: int):
    """Runs ``c``'s algorithm for ``max_steps`` steps and records when the target was first
    crossed (``time/total`` of that line of ``metrics.jsonl``)."""
    lines = run_metrics(compose(run_overrides(base, c.algorithm, max_steps, every)))
    hit = first_crossing(*curve(lines, metric), target)
    c.achieved_steps, c.achieved_time = hit if hit else (None, math.inf)


def run_top(base, ranked: list[Candidate], k: int, target, metric, max_steps, every) -> float:
    """Runs the ``k`` best to the target; sets their achieved rank; returns Spearman's ρ
    between predicted and achieved times."""
    top = ranked[:k]
    for c in top:
        achieve(base, c, target, metric, max_steps, every)
    achieved = ranks([c.achieved_time for c in top])
    for c, r in zip(top, achieved, strict=True):
        c.achieved_rank = float(r)
    return spearman([c.predicted_time for c in top], [c.achieved_time for c in top])


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def as_records(ranked: Sequence[Candidate]) -> list[dict]:
    """The ``--json`` list: ``algorithm``, ``seconds_per_step``, ``bytes_per_step`` (mean over
    the period), ``predicted_time_to_target`` (simulated seconds; null: never), ``rank``,
    then the details."""
    return [
        {
            "algorithm": c.algorithm,
            "seconds_per_step": c.cost.seconds_per_step,
            "bytes_per_step": c.cost.bytes_per_step,
            "predicted_time_to_target": _finite(c.predicted_time),
            "rank": c.rank,
            "predicted_steps_to_target": _finite(c.predicted_steps),
            "prediction_from": c.source,
            "bytes_per_communicating_step": c.cost.bytes_communicating,
            "bytes_per_quiet_step": c.cost.bytes_quiet,
            "period": c.cost.period,
            "compute_s_per_step": c.cost.compute_s,
            "comm_s_per_step": c.cost.comm_s,
            "fit_a_b_p": list(c.fit),
            "pilot_steps": c.pilot_steps,
            "pilot_seconds_per_step": c.pilot_seconds_per_step,
            "pilot_final": c.pilot_final,
            "achieved_time_to_target": _finite(c.achieved_time),
            "achieved_steps_to_target": c.achieved_steps,
            "achieved_rank": c.achieved_rank,
        }
        for c in ranked
    ]


def _num(x: float | None, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "never"
    return f"{x:.4g}{unit}"


def table(ranked: Sequence[Candidate], achieved: bool = False) -> str:
    """The ranking as aligned text."""
    head = ["rank", "algorithm", "s/step", "bytes/step", "steps to target", "time to target"]
    head += ["achieved time", "achieved rank"] if achieved else []
    rows = [head]
    for c in ranked:
        src = "" if c.source == "fit" else " (pilot)"
        row = [str(c.rank), c.algorithm, f"{c.cost.seconds_per_step:.4g}"]
        row += [f"{c.cost.bytes_per_step:.4g}", _num(c.predicted_steps) + src]
        row += [_num(c.predicted_time, " s")]
        if achieved:
            done = c.achieved_rank is not None
            row += [_num(c.achieved_time, " s") if done else "-"]
            row += [f"{c.achieved_rank:g}" if done else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def recommendation(ranked: Sequence[Candidate], target: float, metric: str) -> str:
    """One paragraph: the recommended algorithm and why (its bytes, seconds per step and
    predicted convergence against the baseline and the runner-up)."""
    best = ranked[0]
    if not math.isfinite(best.predicted_time):
        return (
            f"No recommendation: no algorithm is predicted to reach {metric} <= {target:g} "
            "(every fitted curve levels off above it); lower the target or lengthen the pilot."
        )
    how = "its pilot crossed it" if best.source == "pilot" else "extrapolated from its pilot"
    text = (
        f"Recommended: {best.algorithm}. It is predicted to reach {metric} <= {target:g} in "
        f"{best.predicted_time:.4g} simulated s ({best.predicted_steps:.4g} steps, {how}) at "
        f"{best.cost.seconds_per_step:.4g} s/step, sending {best.cost.bytes_per_step:.4g} "
        "bytes per step per worker."
    )
    base = next((c for c in ranked if c.algorithm == BASELINE), None)
    if base is not None and base is not best:
        text += (
            f" {BASELINE} would take {_num(base.predicted_time, ' s')} "
            f"({_num(base.predicted_steps)} steps at {base.cost.seconds_per_step:.4g} s/step, "
            f"{base.cost.bytes_per_step:.4g} bytes/step)"
        )
        if math.isfinite(base.predicted_time):
            text += f": {base.predicted_time / best.predicted_time:.3g}x the recommended time"
        text += "."
    if len(ranked) > 1:
        second = ranked[1]
        text += (
            f" Runner-up: {second.algorithm} ({_num(second.predicted_time, ' s')}, "
            f"{second.cost.seconds_per_step:.4g} s/step)."
        )
    return text


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    overrides: tuple[str, ...]
    algorithms: tuple[str, ...]
    target: float
    metric: str
    pilot_steps: int
    every: int
    run_top: int
    max_steps: int
    json_path: str | None


def _parser():
    import argparse

    class OneLine(argparse.ArgumentParser):
        def error(self, message):
            raise PlanError(message)

    p = OneLine(
        prog="jdo-plan",
        description="Rank algorithms by predicted simulated time to a target loss.",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=logistic workers=16")
    p.add_argument("--algorithms", default=",".join(DEFAULT_SET))
    p.add_argument("--target", type=float, default=None, help="the loss to reach (required)")
    p.add_argument("--metric", default="eval/avg_model/loss")
    p.add_argument("--pilot-steps", type=int, default=256)
    p.add_argument("--every", type=int, default=16, help="log and evaluate every N steps")
    p.add_argument("--run-top", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="--run-top's budget per run")
    p.add_argument("--json", dest="json_path", default=None)
    return p


def parse(argv: Sequence[str]) -> Options:
    """Command-line options, checked (:class:`PlanError`, one line, on bad input)."""
    a = _parser().parse_args(list(argv))
    if a.target is None or not math.isfinite(a.target):
        raise PlanError("--target: required, a finite loss to reach (e.g. --target 0.36)")
    names = check_algorithms(a.algorithms.split(","))
    if a.every < 1 or a.pilot_steps < a.every or a.pilot_steps % a.every:
        raise PlanError("--pilot-steps: must be a positive multiple of --every")
    if not 0 <= a.run_top <= len(names):
        raise PlanError(f"--run-top: must be between 0 and the {len(names)} algorithms")
    max_steps = a.max_steps if a.max_steps is not None else 8 * a.pilot_steps
    if max_steps < a.every or max_steps % a.every:
        raise PlanError("--max-steps: must be a positive multiple of --every")
    return Options(
        overrides=check_base(a.overrides),
        algorithms=names,
        target=a.target,
        metric=a.metric,
        pilot_steps=a.pilot_steps,
        every=a.every,
        run_top=a.run_top,
        max_steps=max_steps,
        json_path=a.json_path,
    )


def plan(opts: Options, echo=print) -> tuple[list[Candidate], float | None]:
    """Plans (and with ``run_top`` runs) as :func:`main` does: ``(ranked, rho)``."""
    for name in opts.algorithms:  # every config composes and has a cluster before any run
        cfg = compose(run_overrides(opts.overrides, name, opts.pilot_steps, opts.every))
        if not cfg.get("cluster"):
            raise PlanError(
                "cluster: the planner needs a cluster (cluster=datacenter, cloud, edge)"
            )
    candidates = []
    for name in opts.algorithms:
        echo(f"pilot: {name} ({opts.pilot_steps} steps)")
        args = (opts.target, opts.metric, opts.pilot_steps, opts.every)
        candidates.append(plan_one(opts.overrides, name, *args))
    ranked = rank(candidates)
    rho = None
    if opts.run_top:
        echo(f"running the top {opts.run_top} for {opts.max_steps} steps")
        args = (opts.target, opts.metric, opts.max_steps, opts.every)
        rho = run_top(opts.overrides, ranked, opts.run_top, *args)
    return ranked, rho


def main(argv: Sequence[str] | None = None) -> int:
    """``jdo-plan``: exit 0 done, 2 bad input (one line on stderr)."""
    import sys

    from jdo.train.config import ConfigError

    try:
        opts = parse(sys.argv[1:] if argv is None else argv)
        ranked, rho = plan(opts)
    except (PlanError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # Hydra's composition errors: an unknown group or key
        if type(e).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(ranked, achieved=bool(opts.run_top)))
    print()
    print(recommendation(ranked, opts.target, opts.metric))
    if rho is not None:
        print(f"Predicted vs achieved ranking of the top {opts.run_top}: Spearman's rho {rho:.3g}")
    if opts.json_path:
        with open(opts.json_path, "w", encoding="utf-8") as f:
            json.dump(as_records(ranked), f, indent=1)
    return 0


def cli() -> None:
    raise SystemExit(main())
