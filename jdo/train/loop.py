"""The training loop: ``fit(exp, ...)`` in phases — program, restore, compile, loop — that share
one small :class:`Run` object.

The loop dispatches jitted calls of up to ``log_every`` steps (each call's wall time bounded by
``call_seconds``, so a signal is acted on within seconds), and handles a finished call on the
host (checks, records, logs) while the next one runs. Per-step extensions do not grow this
loop: they wrap the algorithm (``wrappers``; see :mod:`jdo.train.program`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdo.algorithms import Algorithm
from jdo.train import distributed
from jdo.train.checkpoint import Checkpointer, tree_digest
from jdo.train.experiment import Experiment
from jdo.train.guard import guard_nonfinite
from jdo.train.preemption import Preempted, PreemptionWatch, agree
from jdo.train.program import Program, compile_program, make_program, place
from jdo.train.records import Progress, line, train_record
from jdo.train.restore import CheckpointOptions, restore_or_init
from jdo.train.tracker import JsonlTracker, MultiTracker, TensorBoardTracker

log = logging.getLogger("jdo")
INITS = ("shared", "per_worker")  # trainer.init


class NonFiniteError(FloatingPointError):
    """A NaN/inf loss or state with ``nonfinite="stop"``."""


class DivergenceError(NonFiniteError):
    """The loss grew past ``divergence`` times its first value."""


@dataclasses.dataclass(frozen=True)
class Faults:
    """Fault injection for tests: SIGKILL this process once step ``kill_at_step`` is done,
    before its own checkpoint and after the earlier ones are committed (a kill between
    checkpoints); or, with ``in_save``, right after its asynchronous save started. Or SIGTERM
    it once a call ends at or past ``sigterm_at_step``."""

    kill_at_step: int | None = None
    in_save: bool = False
    sigterm_at_step: int | None = None

    @classmethod
    def from_env(cls, value: str | None) -> Faults:
        """From ``JDO_TEST_FAULT``, a test-only hook: ``"130"`` (SIGKILL after step 130),
        ``"130:in_save"`` (during its save) or ``"130:sigterm"``."""
        if not value:
            return cls()
        step, _, where = value.partition(":")
        if where == "sigterm":
            return cls(sigterm_at_step=int(step))
        return cls(int(step), where == "in_save")

    def maybe_signal(self, step: int) -> None:
        if self.sigterm_at_step is not None and step >= self.sigterm_at_step:
            object.__setattr__(self, "sigterm_at_step", None)  # once
            os.kill(os.getpid(), signal.SIGTERM)

    def maybe_kill(self, step: int, in_save: bool, state, ckpt: Checkpointer | None) -> None:
        if self.kill_at_step == step and self.in_save == in_save:
            if ckpt is not None and not in_save:
                ckpt.wait()
            jax.block_until_ready(state)
            log.warning("fault injection: SIGKILL at step %d%s", step, " (in save)" * in_save)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How :func:`fit` trains (see its docstring); ``fit`` takes these as keywords."""

    workers: int
    steps: int
    batch_size: int | None
    lifting: str = "vmap"
    devices: int = 1
    chunk: int | None = None  # vmap: per-worker compute this many workers at a time
    map: str = "vmap"  # vmap: per-worker compute by vmap | scan | auto (jdo.worker_map)
    nodes: int = 1  # shard_map: a two-level (nodes, local) mesh of nodes x workers/nodes
    log_every: int = 50
    eval_every: int = 250
    eval_batch_size: int = 1024
    seed: int = 0
    output_dir: str | None = None
    tensorboard: bool = False
    progress: bool = True
    checkpoint: CheckpointOptions | None = None
    nonfinite: str = "stop"
    divergence: float | None = 1e6
    call_seconds: float = 5.0
    faults: Faults = Faults()
    config_yaml: str | None = None
    overrides: Sequence[str] = ()  # the command line's overrides, recorded in the summary
    wrappers: Sequence[Callable[[Algorithm], Algorithm]] = ()
    clock: Callable[[Algorithm], Algorithm] | None = None  # see jdo.train.clocked.with_clock
    cluster: Any = None  # a jdo.system.Cluster: its collective algorithm prices bytes/step
    init: str = "shared"  # "per_worker": each worker initialises its own params (see restore)

    def check(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("steps", "eval_every"):
            value = getattr(self, name)
            if value < 1 or value % self.log_every:
                raise ValueError(
                    f"{name}={value} must be a positive multiple of log_every={self.log_every}"
                )
        every = self.checkpoint.every if self.checkpoint is not None else None
        if every is not None and (every < 1 or every % self.log_every):
            raise ValueError(
                f"checkpoint every={every} must be a positive multiple of "
                f"log_every={self.log_every}"
            )


@dataclasses.dataclass
class Call:
    """One dispatched jitted call (steps ``step0 .. step0+n``) or evaluation, until handled."""

    kind: str  # "chunk" or "eval"
    step0: int
    n: int
    outputs: Any
    dispatched: float


@dataclasses.dataclass
class Run:
    """What the phases of :func:`fit` share."""

    exp: Experiment
    opts: FitOptions
    program: Program
    data: Any
    key: jax.Array  # every step's draws: fold_in(fold_in(key, worker), step)
    init_key: jax.Array
    state: Any = None
    step: int = 0
    skipped: int = 0
    sent: int | None = None  # bytes sent so far, counted per step (steps that report traffic)
    resumed: dict | None = None
    ckpt: Checkpointer | None = None
    compile_s: float = 0.0
    first_loss: float | None = None  # the mean loss of the run's first step
    diverged: float | None = None  # the loss that tripped the divergence guard
    step_s: float | None = None  # measured seconds per step
    device_free: float = 0.0  # when the device finished its last handled item
    interval: list = dataclasses.field(default_factory=list)  # metrics of the open interval
    interval_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    save_s: list = dataclasses.field(default_factory=list)
    last_save: float = 0.0
    counters: dict = dataclasses.field(default_factory=dict)  # running totals at the last line
    record: dict = dataclasses.field(default_factory=dict)
    stop_at: int | None = None  # a step off the logging grid where the run stops (signal)
    started: float = 0.0


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------


def fit(exp: Experiment, **options) -> dict[str, Any]:
    """Trains ``exp`` for ``steps`` steps (keywords: :class:`FitOptions`).

    Every random draw (batches, compression, participation) comes from
    ``fold_in(fold_in(key(seed), worker), step)``, so a run resumed from a checkpoint is
    bit-identical to one that never stopped. With ``checkpoint``, the newest good checkpoint
    in ``checkpoint.directory`` is restored first (onto this run's lifting and devices: workers
    are logical), one is saved every ``checkpoint.every`` steps or ``checkpoint.every_s``
    seconds and at the end, and SIGTERM, SIGUSR2 or SIGINT save one at the next call boundary
    (a call runs at most about ``call_seconds``) and raise
    :class:`~jdo.train.preemption.Preempted`. ``nonfinite``: ``"stop"`` raises
    :class:`NonFiniteError` on a non-finite loss (checked every step) or state (checked once
    per call, before any checkpoint), naming the step and the last good checkpoint;
    ``"skip"`` drops such steps on every worker and counts them (``skipped_steps``).
    ``divergence``: a mean loss above this many times the first one raises
    :class:`DivergenceError` (supervised tasks; None: off).

    ``lifting="vmap"`` with ``devices > 1`` spreads the worker axis over that many devices;
    ``lifting="hybrid"`` puts ``workers / devices`` on each (shard_map × vmap, collectives
    lowered to what crosses devices; ``bytes/step_device`` in the records);
    ``lifting="shard_map"`` with ``nodes=m > 1`` runs on a two-level ``(nodes, local)``
    mesh (:func:`jdo.train.make_mesh`).
    ``chunk``/``map`` evaluate the step's per-worker compute ``chunk`` workers at a time or
    one by one (``map="scan"``; :mod:`jdo.worker_map`).
    ``init="per_worker"``: each worker initialises its own params from
    ``exp.init_params(fold_in(key(seed), worker))`` (default ``"shared"``: all from
    ``exp.params``).
    ``wrappers``: per-step extensions, each ``Algorithm -> Algorithm``, applied in order.
    ``clock``: the simulated cluster's clock (:func:`jdo.train.clocked.with_clock`), applied
    first; ``cluster``: the :class:`~jdo.system.Cluster` whose collective algorithm prices the
    wire bytes (ring without one).

    Returns the summary (also written to ``output_dir/summary.json``) with the final state
    under ``"state"``; per-interval metrics go to ``output_dir/metrics.jsonl``.
    """
    opts = FitOptions(**options)
    opts.check()
    with PreemptionWatch() as watch:  # from the start: a signal during compile counts
        run = _program(exp, opts)
        restore_or_init(run)
        _write_config(run)
        _compile(run)
        _loop(run, watch)
        return _summary(run)


def _algorithm(exp: Experiment, opts: FitOptions, clocked: bool = True) -> Algorithm:
    """The algorithm as the run steps it: the clock innermost (its own collectives are not
    counted in the run's bytes: ``clocked=False``), then ``wrappers``, then the guard."""
    algo = exp.algorithm
    if opts.clock is not None or opts.wrappers:  # they wrap step: the cohort's would escape
        algo = algo._replace(cohort=None)
    if clocked and opts.clock is not None:
        algo = opts.clock(algo)
    for wrap in opts.wrappers:
        algo = wrap(algo)
    return guard_nonfinite(algo, opts.nonfinite)


def _program(exp: Experiment, opts: FitOptions) -> Run:
    algo = _algorithm(exp, opts)
    program = make_program(
        exp,
        algo,
        workers=opts.workers,
        lifting=opts.lifting,
        devices=opts.devices,
        batch_size=opts.batch_size,
        length=opts.log_every,
        check_state=opts.nonfinite == "stop",
        chunk=opts.chunk,
        map=opts.map,
        nodes=opts.nodes,
    )
    data = place(tuple(exp.data), program.per_worker) if exp.data is not None else ()
    init_key, key = jax.random.split(jax.random.key(opts.seed))
    return Run(exp, opts, program, data, key, init_key)


def _write_config(run: Run) -> None:
    """After any refusal to resume: nothing of an earlier run is written over before."""
    opts = run.opts
    if _writer(opts) and opts.config_yaml is not None:
        with open(os.path.join(opts.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(opts.config_yaml)


def _writer(opts: FitOptions) -> bool:
    return opts.output_dir is not None and jax.process_index() == 0


def _compile(run: Run) -> None:
    t0 = time.perf_counter()
    opts = run.opts
    run.program = compile_program(
        run.program,
        run.exp,
        _algorithm(run.exp, opts, clocked=False),
        run.state,
        run.data,
        run.key,
        workers=opts.workers,
        batch_size=opts.batch_size,
        eval_batch_size=opts.eval_batch_size,
        cluster=opts.cluster,
    )
    distributed.meet("compiled")  # multi-process: the first collective starts on all together
    if run.ckpt is not None:  # the checkpoint digest compiles here, not inside the loop
        tree_digest(run.state)
    run.compile_s += time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _loop(run: Run, watch: PreemptionWatch) -> None:
    opts = run.opts
    trackers = []
    if _writer(opts):  # drop lines a killed earlier attempt wrote after this step
        trackers.append(JsonlTracker(os.path.join(opts.output_dir, "metrics.jsonl"), run.step))
        if opts.tensorboard:
            trackers.append(TensorBoardTracker(os.path.join(opts.output_dir, "tb"), run.step))
    tracker = MultiTracker(trackers)
    queue: deque[Call] = deque()
    run.device_free = run.last_save = run.started = time.perf_counter()
    try:
        with Progress(opts.steps - run.step, opts.progress) as progress:
            while run.step < opts.steps:
                _dispatch(run, queue)
                opts.faults.maybe_signal(run.step)
                _drain(run, queue, tracker, progress, keep=1 + (queue[-1].kind == "eval"))
                if run.step % opts.log_every == 0:
                    _boundary(run, queue, tracker, progress, watch, run.step)
                elif _far_from_boundary(run) and agree(watch.signum is not None):
                    _stop_now(run, queue, tracker, progress, watch)
            _drain(run, queue, tracker, progress, keep=0)
        if run.ckpt is not None:
            run.ckpt.close()  # waits for the last save
    finally:
        tracker.close()


def _dispatch(run: Run, queue: deque) -> None:
    """Dispatches the next call (at most to the interval's end), and the evaluation after it
    when it ends an evaluation interval."""
    opts = run.opts
    left = opts.log_every - run.step % opts.log_every
    # The first call runs one step to measure it; then each call runs ~call_seconds.
    n = 1 if run.step_s is None else int(opts.call_seconds / max(run.step_s, 1e-9))
    n = max(1, min(n, left))
    t = time.perf_counter()
    run.state, metrics, finite = run.program.chunk(
        run.state, run.data, run.key, jnp.int32(run.step), jnp.int32(n)
    )
    queue.append(Call("chunk", run.step, n, (metrics, finite), t))
    run.step += n
    end = run.step
    if end % opts.log_every == 0 and (end % opts.eval_every == 0 or end == opts.steps):
        t = time.perf_counter()
        out = run.program.evaluate(run.state, jax.random.fold_in(run.init_key, end))
        queue.append(Call("eval", end, 0, out, t))


def _drain(run, queue, tracker, progress, keep: int) -> None:
    """Handles dispatched items, oldest first, until ``keep`` remain in flight."""
    while len(queue) > keep:
        item = queue.popleft()
        outputs = jax.device_get(item.outputs)
        now = time.perf_counter()
        seconds = now - max(run.device_free, item.dispatched)
        run.device_free = now
        if item.kind == "eval":
            run.eval_s += seconds
            run.record.update({k: float(v) for k, v in outputs.items()})
            run.record["time/eval_s"] = seconds
            _log_record(run, item.step0, tracker, progress, evaluated=True)
            continue
        run.train_s += seconds
        run.interval_s += seconds
        run.step_s = seconds / item.n
        _check_call(run, item, *outputs)
        _count_traffic(run, outputs[0], item.n)
        run.interval.append((outputs[0], item.n))
        end = item.step0 + item.n
        if end % run.opts.log_every == 0 or end == run.stop_at:
            _close_interval(run, end)
            evaluated = queue and queue[0].kind == "eval" and queue[0].step0 == end
            if not evaluated:
                _log_record(run, end, tracker, progress, evaluated=False)


def _count_traffic(run: Run, metrics, n: int) -> None:
    """Adds the bytes of the call's ``n`` steps to ``run.sent`` when the algorithm reports
    each step's ``traffic`` (:mod:`jdo.transforms.adaptive`: the fraction ``φ`` of the way
    from the compiled step's cheapest branch to its costliest that the step took): each step
    sends ``round(quiet + φ · (full − quiet))``, the branch taken."""
    traffic = metrics.pop("traffic", None)
    if traffic is None:
        return
    quiet, full = run.program.quiet_bytes, run.program.bytes_per_step
    phi = np.asarray(traffic, np.float64)[0, :n]  # the same on every worker
    run.sent = (run.sent or 0) + int(np.sum(np.round(quiet + phi * (full - quiet))))


def _check_call(run: Run, item: Call, metrics, finite) -> None:
    """Divergence or a non-finite loss (every step; whichever comes first), a non-finite state
    (once per call)."""
    bad = metrics.pop("nonfinite", None)
    bad = np.zeros((1, item.n), bool) if bad is None else bad[:, : item.n]
    first_bad = int(np.argmax(np.any(bad, axis=0))) if np.any(bad) else item.n
    first_over = _first_divergent(run, metrics, item.n)
    if first_over < min(first_bad, item.n):
        raise DivergenceError(
            f"diverged: the mean loss {run.diverged:.3g} at step {item.step0 + first_over + 1} "
            f"is over {run.opts.divergence:g} times the first one ({run.first_loss:.3g}); "
            "likely knob: optimizer.learning_rate (or the algorithm's own step size); training "
            f"stopped; {_last_good(run.ckpt)}"
        )
    if first_bad < item.n:
        raise NonFiniteError(
            f"non-finite loss at step {item.step0 + first_bad + 1} (workers "
            f"{np.flatnonzero(bad[:, first_bad]).tolist()}); training "
            f"stopped; {_last_good(run.ckpt)}"
        )
    if not np.all(finite):
        raise NonFiniteError(
            f"non-finite state after steps {item.step0 + 1}..{item.step0 + item.n} (workers "
            f"{np.flatnonzero(~np.asarray(finite)).tolist()}; the loss was finite); training "
            f"stopped; {_last_good(run.ckpt)}"
        )


def _first_divergent(run: Run, metrics, n: int) -> int:
    """The call's first step whose mean loss is over ``divergence`` times the run's first
    (``n``: none; supervised tasks only)."""
    limit = run.opts.divergence
    if limit is None or run.exp.data is None:
        return n
    loss = np.mean(np.asarray(metrics["loss"], np.float64)[:, :n], axis=0)
    if run.first_loss is None and np.isfinite(loss[0]):
        run.first_loss = float(abs(loss[0]))
    if run.first_loss is None:
        return n
    over = np.flatnonzero(np.abs(loss) > limit * max(run.first_loss, 1e-12))
    if not over.size:
        return n
    run.diverged = float(loss[over[0]])
    return int(over[0])


def _close_interval(run: Run, end: int) -> None:
    """The record of the logging interval ending at ``end`` (its metrics: each ``[W, K]``)."""
    opts, program = run.opts, run.program
    parts, run.interval = run.interval, []  # (metrics: each [W, K], valid steps) per call
    metrics = {k: np.concatenate([m[k][:, :n] for m, n in parts], axis=1) for k in parts[0][0]}
    steps = sum(n for _, n in parts)
    mask = None
    skips = metrics.pop("skipped", None)
    if skips is not None:
        mask = skips[0] == 0  # the same on every worker
        run.skipped += int(np.sum(skips[0]))
    record = train_record(
        metrics,
        end,
        program.bytes_per_step,
        program.quiet_bytes,
        run.exp.counters,
        mask,
        payload_bytes=program.payload_per_step,
        device_bytes=program.device_bytes,
    )
    if skips is not None:
        record["skipped_steps"] = run.skipped
    if run.sent is not None:  # counted per step: the branch each step took
        record["bytes/total"] = run.sent
    seconds = max(run.interval_s, 1e-9)
    run.interval_s = 0.0
    record["steps_per_s"] = steps / seconds
    if run.exp.data is not None:
        record["samples_per_s"] = record["steps_per_s"] * opts.workers * _samples(run)
    for name in run.exp.counters:
        total = record[f"train/{name}"]
        if name in run.counters:
            record[f"{name}_per_s"] = (total - run.counters[name]) / seconds
        run.counters[name] = total
    run.record = record


def _samples(run: Run) -> float:
    """Samples per worker per step."""
    return run.opts.batch_size or float(np.mean(run.exp.data.count))


def _log_record(run: Run, step: int, tracker, progress, evaluated: bool) -> None:
    tracker.log(step, run.record)
    progress.update(step, run.opts.steps, run.record, logged=evaluated)
    if evaluated:
        log.info("%s", line(step, run.record))


def _boundary(run: Run, queue, tracker, progress, watch, end: int) -> None:
    """At a logging boundary: fault injection, checkpoint and stop on a signal."""
    opts, ckpt = run.opts, run.ckpt
    opts.faults.maybe_kill(end, False, run.state, ckpt)
    stop = agree(watch.signum is not None) and end < opts.steps
    every, every_s = _cadence(opts)
    due = (every and end % every == 0) or (
        every_s is not None and agree(time.perf_counter() - run.last_save >= every_s)
    )
    if ckpt is not None and (stop or end == opts.steps or due):
        _drain(run, queue, tracker, progress, keep=0)  # never checkpoint a non-finite state
        _save(run, end)
        opts.faults.maybe_kill(end, True, run.state, ckpt)
    if stop:
        _stop(run, queue, tracker, progress, watch, end)


def _cadence(opts: FitOptions):
    if opts.checkpoint is None:
        return None, None
    return opts.checkpoint.every, opts.checkpoint.every_s


def _save(run: Run, end: int) -> None:
    meta = {
        **run.opts.checkpoint.meta,
        "workers": run.opts.workers,
        "skipped_steps": run.skipped,
        "bytes_sent": run.sent,
        "first_loss": run.first_loss,
    }
    run.save_s.append(run.ckpt.save(end, run.state, meta))
    run.last_save = time.perf_counter()


def _far_from_boundary(run: Run) -> bool:
    """More than one call's time left to the next logging boundary."""
    left = run.opts.log_every - run.step % run.opts.log_every
    return left * (run.step_s or 0.0) > run.opts.call_seconds


def _stop_now(run: Run, queue, tracker, progress, watch) -> None:
    """A signal far from the next logging boundary (slow steps): log the steps done so far
    as a shorter interval, checkpoint here, stop. A resumed run continues mid-interval."""
    run.stop_at = run.step
    _drain(run, queue, tracker, progress, keep=0)
    if run.ckpt is not None:
        _save(run, run.step)
    _stop(run, queue, tracker, progress, watch, run.step)


def _stop(run: Run, queue, tracker, progress, watch, end: int) -> None:
    _drain(run, queue, tracker, progress, keep=0)
    if run.ckpt is not None:
        run.ckpt.close()
    watch.hand_on()
    signum = watch.signum or signal.SIGTERM  # another process got the signal
    raise Preempted(signum, end, run.ckpt.path(end) if run.ckpt else None)


def _last_good(ckpt: Checkpointer | None) -> str:
    if ckpt is None:
        return "checkpointing is off"
    ckpt.wait()
    steps = ckpt.steps()
    if not steps:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {ckpt.path(steps[-1])} (step {steps[-1]})"


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def _summary(run: Run) -> dict[str, Any]:
    opts, program = run.opts, run.program
    record = run.record
    if not record:  # resumed at the end: nothing left to train
        out = program.evaluate(run.state, jax.random.fold_in(run.init_key, run.step))
        record = {k: float(v) for k, v in jax.device_get(out).items()}
    trained = opts.steps - (run.resumed or {}).get("step", 0)
    train_s = max(run.train_s, 1e-9)
    summary = {
        "workers": opts.workers,
        "lifting": opts.lifting,
        "steps": opts.steps,
        "overrides": list(opts.overrides),
        **{k: v for k, v in record.items() if k != "time/eval_s"},
        "bytes/step_by_kind": program.step_bytes,
        "bytes/step_payload_by_kind": program.payload_by_kind,
        "compile_s": run.compile_s,
        "train_s": run.train_s,
        "eval_s": run.eval_s,
        "checkpoint_s": float(np.sum(run.save_s)),
        "wall_s": time.perf_counter() - run.started,
        "steps_per_s": trained / train_s,
    }
    if run.exp.data is not None:
        summary["samples_per_s"] = summary["steps_per_s"] * opts.workers * _samples(run)
    for name in run.exp.counters:
        if not run.resumed and f"train/{name}" in record:
            summary[f"{name}_per_s"] = record[f"train/{name}"] / train_s
    if run.resumed:
        summary["resumed_from"] = run.resumed
    if run.save_s:
        summary["checkpoint/save_block_s"] = float(np.mean(run.save_s))
    if _writer(opts) and trained > 0:  # a rerun of a finished run keeps its summary
        with open(os.path.join(opts.output_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    summary["state"] = run.state
    return summary
