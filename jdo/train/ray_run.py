"""``backend=ray``: the driver of the asynchronous parameter server of :mod:`jdo.train.ray_ps`.

``jdo.train.run`` hands a config with ``backend: ray`` here. The driver starts a local Ray
instance (``ray.address: null``; one CPU per actor, no dashboard) or joins a running cluster
(``ray.address: auto`` or ``host:port``), creates the server actor and W worker actors (each its
own process, ``JAX_PLATFORMS=cpu`` by default, one device), and then only watches: every
``ray.poll_s`` it drains the server's events, writes one ``metrics.jsonl`` line per
``trainer.log_every`` applied updates and evaluates the server's parameters at every
``trainer.eval_every``; it checkpoints the server's state (parameters, optimizer state, version,
per-worker counts, staleness histogram) with the same :class:`~jdo.train.checkpoint.Checkpointer`
and cadence as the SPMD runner, so the same command into the same directory resumes a killed
driver. A step is one applied update (a server version), so ``trainer.steps`` counts gradients,
not rounds of W.

Metrics per line: ``train/loss`` (the workers' batch losses of the interval's updates),
``staleness/mean``, ``staleness/max`` and the histogram ``staleness/<k>`` (how many of the
interval's updates had staleness k), ``updates_per_s``, ``time/wall`` (seconds since the
server first released parameters), ``updates/dropped``, ``ssp/max_lead`` (``ssp``: the most any
released worker was ahead of the slowest, never above s); at evaluations ``train/objective``
(the full objective ``(1/W) Σ_i f_i``), ``train/objective_gap`` (minus its known optimum),
``dist_to_opt`` and the test set's ``eval/avg_model/*``. The run directory also gets
``events.csv``: every applied update (time, worker, read version, applied version, loss).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from jdo.train.builder import Problem, build_problem
from jdo.train.checkpoint import Checkpointer, IncompatibleCheckpoint
from jdo.train.config import ConfigError, known_keys, one_of, positive_float, positive_int
from jdo.train.evaluate import make_evaluate
from jdo.train.experiment import Experiment
from jdo.train.loop import NonFiniteError
from jdo.train.ray_ps import MODES, ParameterServer, Spec, Worker, initial_state
from jdo.train.records import line
from jdo.train.restore import CheckpointOptions
from jdo.train.tracker import make_trackers

log = logging.getLogger("jdo")

RAY_KEYS = ("address", "num_cpus", "max_restarts", "jax_platforms", "poll_s")
FAULT_ENV = "JDO_TEST_FAULT"  # test-only: "ray_kill_worker:<i>@<version>" SIGKILLs worker i
INIT_ATTEMPTS = 3  # a local Ray node must start within 30 s (hard-coded in Ray)
EVENT_COLUMNS = ("time", "worker", "read_version", "applied_version", "loss")
# Groups the SPMD runner reads that a real parameter server has no use for.
NOT_TAKEN = ("cluster", "faults", "aggregator")


class WorkerLost(RuntimeError):
    """A worker actor died and Ray did not restart it (``ray.max_restarts`` used up)."""


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def check_config(cfg: Mapping) -> tuple[str, int | None]:
    """Checks what ``backend=ray`` reads (after :func:`jdo.train.config.validate`); returns
    ``(mode, staleness)``. Raises :class:`ConfigError` naming the key."""
    algorithm = cfg["algorithm"]
    target = str(algorithm.get("_target_", ""))
    if not target.endswith("parameter_server"):
        name = target.rsplit(".", 1)[-1] or repr(algorithm)
        raise ConfigError(
            "algorithm",
            f"backend=ray runs algorithm=parameter_server (modes {', '.join(MODES)}), got {name}",
        )
    if cfg["task"].get("kind") == "rl":
        raise ConfigError("task", "backend=ray trains supervised tasks only")
    for key in NOT_TAKEN:
        if cfg.get(key):
            raise ConfigError(key, f"is not taken by backend=ray (set {key}=none)")
    mode = one_of(cfg, "algorithm.mode", MODES)
    staleness = algorithm.get("staleness")
    if mode == "ssp":
        if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0:
            raise ConfigError(
                "algorithm.staleness",
                f"ssp needs a non-negative integer staleness (parameter_server.staleness=2), "
                f"got {staleness!r}",
            )
    else:
        staleness = None
    known_keys(cfg, "ray", RAY_KEYS)
    address = cfg["ray"]["address"]
    if address is not None and not (isinstance(address, str) and address):
        raise ConfigError("ray.address", f"must be null, auto or host:port, got {address!r}")
    positive_int(cfg, "ray.num_cpus", allow_none=True)
    restarts = cfg["ray"]["max_restarts"]
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < -1:
        raise ConfigError(
            "ray.max_restarts", f"must be an integer >= -1 (-1: always), got {restarts!r}"
        )
    if not isinstance(cfg["ray"]["jax_platforms"], str):
        raise ConfigError("ray.jax_platforms", "must be a string such as cpu or cuda")
    positive_float(cfg, "ray.poll_s")
    if cfg["trainer"]["nonfinite"] != "stop":
        raise ConfigError(
            "trainer.nonfinite",
            "backend=ray stops on a non-finite loss (stop); skipping a step is not supported",
        )
    return mode, staleness


# ----------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("backend", "backend=ray needs Ray: pip install 'jdo[ray]'") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connects to Ray unless this process already is: a new local instance (``address``
    None; ``num_cpus`` CPUs, no dashboard, warnings only) or a running cluster (``"auto"``
    or ``host:port``). Returns whether this call connected (the caller then shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        options.update(num_cpus=num_cpus, include_dashboard=False)
    else:
        options["address"] = address
    for attempt in range(INIT_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # Ray forks only to exec its own processes
                warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
                ray.init(**options)
            return True
        except Exception as e:  # Ray raises a bare Exception when its node starts too slowly
            if "timed out during startup" not in str(e) or attempt == INIT_ATTEMPTS - 1:
                raise
            log.warning("Ray's node did not start in time (a loaded machine?); trying again")
            ray.shutdown()
    return True


def actor_env(platforms: str) -> dict:
    """The actors' ``runtime_env``: one JAX device each on ``platforms``, and this process's
    ``jdo`` first on their path (a checkout run imports the same code on every actor)."""
    import jdo

    root = os.path.dirname(os.path.dirname(os.path.abspath(jdo.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {
        "env_vars": {
            "JAX_PLATFORMS": platforms,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "PYTHONPATH": path,
        }
    }


def _start_actors(spec: Spec, state, ray_cfg: Mapping):
    ray = import_ray()
    env = actor_env(ray_cfg["jax_platforms"])
    needed, have = spec.workers + 1, ray.cluster_resources().get("CPU", 0)
    if have < needed:
        raise ConfigError(
            "workers",
            f"backend=ray runs one actor per worker plus the server ({needed} CPUs); the Ray "
            f"cluster has {have:g}",
        )
    name = f"jdo-parameter-server-{uuid.uuid4().hex[:12]}"
    server = (
        ray.remote(ParameterServer)
        .options(name=name, num_cpus=1, runtime_env=env, max_restarts=0)
        .remote(spec, state)
    )
    restarts = ray_cfg["max_restarts"]
    worker_cls = ray.remote(Worker).options(
        num_cpus=1, runtime_env=env, max_restarts=restarts, max_task_retries=restarts
    )
    workers = [worker_cls.remote(spec, i, name) for i in range(spec.workers)]
    return server, workers


# ----------------------------------------------------------------------------------------------
# Evaluation and records
# ----------------------------------------------------------------------------------------------


def make_objective(problem: Problem):
    """``objective(params)``: ``(1/W) Σ_i f_i(params)``, each ``f_i`` worker i's mean loss over
    its whole shard: what the workers jointly minimise."""
    data = jax.device_put(tuple(problem.data))

    @jax.jit
    def objective(params):
        def one(x, y, count):
            weight = (jnp.arange(x.shape[0]) < count).astype(jnp.float32)
            return problem.loss_fn(params, {"x": x, "y": y, "weight": weight}, None)[0]

        return jnp.mean(jax.vmap(one)(*data))

    return objective


class Evaluator:
    """The driver's evaluation of the server's parameters at a version."""

    def __init__(self, problem: Problem, eval_batch_size: int):
        self.objective = make_objective(problem)
        optimum = problem.dataset.optimum if problem.dataset is not None else None
        same = optimum is not None and jax.tree.structure(optimum) == jax.tree.structure(
            problem.params
        )
        self.best = float(self.objective(optimum)) if same else None
        exp = Experiment(
            None, problem.apply, problem.loss_fn, problem.params, None, problem.dataset
        )
        self.test = make_evaluate(exp, eval_batch_size) if problem.dataset is not None else None

    def __call__(self, params) -> dict[str, float]:
        out = {"train/objective": float(self.objective(params))}
        if self.best is not None:
            out["train/objective_gap"] = out["train/objective"] - self.best
        if self.test is not None:
            stacked = jax.tree.map(lambda x: jnp.asarray(x)[None], params)
            test = jax.device_get(self.test(stacked))
            out.update({k: float(v) for k, v in test.items() if k.startswith("eval/avg_model/")})
            if "dist_to_opt" in test:
                out["dist_to_opt"] = float(test["dist_to_opt"])
        return out


def staleness_record(taus: np.ndarray) -> dict[str, float]:
    """``staleness/mean``, ``staleness/max`` and ``staleness/<k>`` (counts) of ``taus``."""
    if len(taus) == 0:
        return {}
    counts = np.bincount(taus)
    out = {"staleness/mean": float(taus.mean()), "staleness/max": int(taus.max())}
    out.update({f"staleness/{k}": int(c) for k, c in enumerate(counts)})
    return out


def interval_record(events: list[tuple], t_before: float, leads: list[int]) -> dict[str, float]:
    """One logging interval's record from its events (application order)."""
    arr = np.asarray([e[1:4] for e in events], np.int64)
    taus = arr[:, 2] - 1 - arr[:, 1]
    t_end = events[-1][0]
    record = {"train/loss": float(np.mean([e[4] for e in events]))}
    record.update(staleness_record(taus))
    record["updates_per_s"] = len(events) / max(t_end - t_before, 1e-9)
    record["time/wall"] = float(t_end)
    if leads:
        record["ssp/max_lead"] = int(max(leads))
    return record


# ----------------------------------------------------------------------------------------------
# Checkpoints and files
# ----------------------------------------------------------------------------------------------


def _abstract_state(problem: Problem, workers: int):
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(lambda p: initial_state(p, problem.optimizer, workers), problem.params)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def _restore(problem: Problem, spec: Spec, opts: CheckpointOptions):
    """``(checkpointer, (version, host state, meta) or None)``."""
    ckpt = Checkpointer(
        opts.directory,
        keep_last=opts.keep_last,
        keep_every=opts.keep_every,
        async_save=opts.async_save,
    )
    abstract = _abstract_state(problem, spec.workers)

    def target(meta):
        if opts.check_meta is not None:
            opts.check_meta(meta)
        return abstract

    try:
        found = ckpt.restore_latest(target, on_corrupt=log.warning)
    except IncompatibleCheckpoint as e:
        ckpt.close()
        raise ConfigError("checkpoint", f"{e}; use another output directory") from None
    if found is None:
        return ckpt, None
    version, state, meta = found
    if version > spec.steps:
        ckpt.close()
        raise ConfigError(
            "trainer.steps",
            f"the checkpoint in {opts.directory} is at update {version}: use trainer.steps >= "
            f"{version}, or another output directory",
        )
    log.info("resumed from %s (update %d)", ckpt.path(version), version)
    return ckpt, (version, jax.device_get(state), meta)


def _open_events(path: str, keep_upto: int):
    """``events.csv`` for appending, without the rows of updates after ``keep_upto`` (written
    by an interrupted attempt after its last checkpoint; they happen again)."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["applied_version"]) <= keep_upto]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, EVENT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by the driver


def _kill_fault() -> tuple[int, int] | None:
    """``(worker, version)`` from the test-only ``JDO_TEST_FAULT``: ``ray_kill_worker:<i>@<v>``
    SIGKILLs worker i's process once the server passed version v; ``ray_kill_driver@<v>``
    (worker -1) SIGKILLs the driver itself once a checkpoint at or after v is committed."""
    value = os.environ.get(FAULT_ENV, "")
    if value.startswith("ray_kill_driver@"):
        return -1, int(value.split("@", 1)[1])
    if not value.startswith("ray_kill_worker:"):
        return None
    worker, _, version = value.split(":", 1)[1].partition("@")
    return int(worker), int(version)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


class Driver:
    """Watches one run: drains the server, writes records, evaluates, checkpoints."""

    def __init__(self, problem: Problem, spec: Spec, container: Mapping, output_dir, opts):
        self.problem, self.spec, self.container = problem, spec, container
        self.output_dir, self.opts = output_dir, opts
        trainer = container["trainer"]
        self.log_every, self.eval_every = trainer["log_every"], trainer["eval_every"]
        self.evaluate = Evaluator(problem, trainer["eval_batch_size"])
        self.ckpt, self.start, self.resumed, state = None, 0, None, None
        if opts is not None:
            self.ckpt, found = _restore(problem, spec, opts)
            if found is not None:
                self.start, state, _ = found
                self.resumed = {"step": self.start, "path": self.ckpt.path(self.start)}
        self.state = state
        self.version, self.boundary = self.start, self.start
        self.pending: list[tuple] = []
        self.all_events: list[tuple] = []
        self.all_releases: list[tuple] = []
        self.leads: list[int] = []
        self.snapshots: dict[int, Any] = {}
        self.t_prev, self.record, self.report = 0.0, {}, None
        self.saved_version, self.last_save, self.save_s = -1, time.perf_counter(), []
        self.save_pending, self.training = False, False
        self.kill = _kill_fault()
        self.tracker = self.events_file = None
        if output_dir is not None:  # the runner's trackers; lines after the checkpoint dropped
            self.tracker = make_trackers(output_dir, container["logger"], self.start, container)
            self.events_file = _open_events(os.path.join(output_dir, "events.csv"), self.start)

    def close(self) -> None:
        for f in (self.tracker, self.events_file):
            if f is not None:
                f.close()
        if self.ckpt is not None:
            self.ckpt.close()

    # -- events -> records ---------------------------------------------------------------------

    def take(self, report: dict) -> None:
        """One drain of the server: its events, releases and snapshots."""
        self.report, self.version = report, report["version"]
        if not self.training and report["t"] > 0:  # every worker is up: the cadence starts
            self.training, self.last_save = True, time.perf_counter()
        events = report["events"]
        for e in events:
            if not np.isfinite(e[4]):
                raise NonFiniteError(
                    f"non-finite loss {e[4]} in worker {e[1]}'s gradient applied at update "
                    f"{e[3]}; {self._last_good()}"
                )
        if self.events_file is not None and events:
            csv.writer(self.events_file).writerows(events)
            self.events_file.flush()
        self.pending += events
        self.all_events += events
        self.all_releases += report["releases"]
        if self.spec.mode == "ssp":
            self.leads += [n - low for _, n, low, _ in report["releases"]]
        self.snapshots.update(report["snapshots"])
        end = (self.boundary // self.log_every + 1) * self.log_every  # steps is a multiple
        while end <= self.version:
            self._close_interval(end)
            end += self.log_every

    def _close_interval(self, end: int) -> None:
        inside = [e for e in self.pending if e[3] <= end]
        self.pending = [e for e in self.pending if e[3] > end]
        self.boundary = end
        if not inside:
            return
        record = interval_record(inside, self.t_prev, self.leads)
        self.t_prev, self.leads = inside[-1][0], []
        record["updates/dropped"] = int(self.report["dropped"])
        if end in self.snapshots and (end % self.eval_every == 0 or end == self.spec.steps):
            record.update(self.evaluate(self.snapshots.pop(end)))
            log.info("%s", line(end, record, self.spec.steps))
        self.snapshots = {v: p for v, p in self.snapshots.items() if v > end}
        self.record = record
        if self.tracker is not None:
            self.tracker.log(end, record)
        every = self.opts.every if self.opts is not None else None
        if every and end % every == 0:
            self.save_pending = True

    # -- checkpoints ---------------------------------------------------------------------------

    def maybe_save(self, server, force: bool = False) -> None:
        """Checkpoints the server's state when the cadence says so (or ``force``); a forced
        call also keeps the state as the run's final one."""
        opts, now = self.opts, time.perf_counter()
        due = (
            self.ckpt is not None
            and self.training
            and (
                self.save_pending
                or (opts.every_s is not None and now - self.last_save >= opts.every_s)
            )
        )
        if not (due or force):
            return
        report = import_ray().get(server.drain_with_state.remote())
        self.take(report)
        state = report["state"]
        version = int(state["version"])
        self.save_pending, self.last_save, self.state = False, now, state
        if self.ckpt is None or version == self.saved_version:
            return
        meta = {**opts.meta, "workers": self.spec.workers, "backend": "ray"}
        self.save_s.append(self.ckpt.save(version, state, meta))
        self.saved_version = version

    def _last_good(self) -> str:
        if self.ckpt is None:
            return "checkpointing is off"
        self.ckpt.wait()
        steps = self.ckpt.steps()
        return (
            f"the last good checkpoint is {self.ckpt.path(steps[-1])}"
            if steps
            else ("no checkpoint was written yet")
        )

    # -- faults ----------------------------------------------------------------------------

    def maybe_kill(self, server) -> None:
        """The test-only faults of :func:`_kill_fault`."""
        if self.kill is None or self.version < self.kill[1]:
            return
        if self.kill[0] < 0:  # the driver: after a checkpoint at or past the version
            if self.saved_version < self.kill[1]:
                self.maybe_save(server, force=True)
            self.ckpt.wait()
            log.warning("fault injection: SIGKILL the driver at update %d", self.saved_version)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        worker, self.kill = self.kill[0], None
        pid = self.report["pids"][worker][-1]
        log.warning(
            "fault injection: SIGKILL worker %d (pid %d) at update %d", worker, pid, self.version
        )
        os.kill(pid, signal.SIGKILL)


def _check_workers(ray, refs: dict, restarts: int) -> None:
    """Raises :class:`WorkerLost` if a worker's task failed for good."""
    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    for ref in done:
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            raise WorkerLost(
                f"worker {refs[ref]} died and was not restarted (ray.max_restarts={restarts}): "
                f"{type(e).__name__}"
            ) from None


def _watch(driver: Driver, server, refs: dict, ray_cfg: Mapping) -> None:
    """The driver's loop until the server applied ``steps`` updates (or a signal arrives)."""
    from jdo.train.preemption import Preempted, PreemptionWatch

    ray = import_ray()
    with PreemptionWatch() as watch:
        while True:
            time.sleep(ray_cfg["poll_s"])
            driver.take(ray.get(server.drain.remote()))
            _check_workers(ray, refs, ray_cfg["max_restarts"])
            driver.maybe_save(server)
            driver.maybe_kill(server)
            if driver.version >= driver.spec.steps:
                return
            if watch.signum is not None:
                ray.get(server.stop.remote())
                driver.take(ray.get(server.drain.remote()))
                driver.maybe_save(server, force=True)
                path = driver.ckpt.path(driver.saved_version) if driver.ckpt else None
                raise Preempted(watch.signum, driver.version, path)


def prepare(cfg: DictConfig | Mapping, container: Mapping) -> tuple[Problem, Spec]:
    """Checks the config (:func:`check_config`) and builds the problem on the driver (a bad
    value fails here, before any actor starts): ``(problem, spec)``."""
    mode, staleness = check_config(container)
    import_ray()  # installed? (before the problem is built)
    problem = build_problem(cfg)
    trainer = container["trainer"]
    spec = Spec(
        config=dict(container),
        workers=int(container["workers"]),
        mode=mode,
        staleness=staleness,
        steps=int(trainer["steps"]),
        batch_size=trainer["batch_size"],
        seed=int(container["seed"]),
        snapshot_every=int(trainer["eval_every"]),
    )
    return problem, spec


def train(
    problem: Problem,
    spec: Spec,
    container: Mapping,
    *,
    output_dir: str | None = None,
    checkpoint: CheckpointOptions | None = None,
    config_yaml: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs the parameter server to ``spec.steps`` applied updates; returns the summary (also
    written to ``output_dir/summary.json``), with this attempt's ``events`` and ``releases``
    (arrays), the workers' ``pids`` and the server's final ``state`` added."""
    t_start = time.perf_counter()
    ray_cfg = container["ray"]
    ray = import_ray()
    started = init_ray(ray_cfg["address"], ray_cfg["num_cpus"] or spec.workers + 1)
    driver = server = None
    workers = []
    try:
        driver = Driver(problem, spec, container, output_dir, checkpoint)
        if output_dir is not None and config_yaml is not None:
            with open(os.path.join(output_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(config_yaml)
        if driver.start < spec.steps:
            server, workers = _start_actors(spec, driver.state, ray_cfg)
            refs = {w.run.remote(): i for i, w in enumerate(workers)}
            _watch(driver, server, refs, ray_cfg)
            ray.get(list(refs), timeout=120)  # each returns once its pull says the run is over
            driver.take(ray.get(server.drain.remote()))
            driver.maybe_save(server, force=True)
        return _summary(driver, spec, overrides, time.perf_counter() - t_start)
    finally:
        for actor in [*workers, *([server] if server is not None else [])]:
            ray.kill(actor)
        if driver is not None:
            driver.close()
        if started:
            ray.shutdown()


def _summary(driver: Driver, spec: Spec, overrides: Sequence[str], wall_s: float) -> dict:
    events = np.asarray([e[:4] for e in driver.all_events], np.float64).reshape(-1, 4)
    state = driver.state
    hist = np.asarray(state["staleness_hist"]) if state is not None else np.zeros(1, np.int64)
    hist = hist[: max(np.flatnonzero(hist).tolist() or [0]) + 1]
    trained_s = float(events[-1, 0]) if len(events) else 0.0
    leads = [n - low for _, n, low, _ in driver.all_releases]
    record = driver.record  # resumed at the end (nothing trained): evaluate the checkpoint
    if not record and state is not None:
        record = driver.evaluate(state["params"])
    summary = {
        "backend": "ray",
        "workers": spec.workers,
        "mode": spec.mode,
        "staleness": spec.staleness,
        "steps": spec.steps,
        "overrides": list(overrides),
        **{k: v for k, v in record.items() if not k.startswith("staleness/")},
        "updates": int(driver.version),
        "updates/by_worker": np.asarray(state["done"]).tolist() if state is not None else [],
        "staleness/histogram": hist.tolist(),
        "staleness/mean": float(np.arange(len(hist)) @ hist / max(hist.sum(), 1)),
        "staleness/max": len(hist) - 1,
        "updates_per_s": len(events) / max(trained_s, 1e-9),
        "train_s": trained_s,
        "wall_s": wall_s,
        "startup_s": wall_s - trained_s,
        "restarts": {
            i: max(len(p) - 1, 0) for i, p in (driver.report or {}).get("pids", {}).items()
        },
        "checkpoint_s": float(np.sum(driver.save_s)),
    }
    if spec.mode == "ssp":
        summary["ssp/max_lead"] = int(max(leads, default=0))
    if driver.resumed:
        summary["resumed_from"] = driver.resumed
    summary_path = os.path.join(driver.output_dir or "", "summary.json")
    if driver.output_dir is not None and (len(events) or not os.path.exists(summary_path)):
        with open(os.path.join(driver.output_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    summary["events"] = np.asarray(driver.all_events, np.float64).reshape(-1, len(EVENT_COLUMNS))
    summary["releases"] = np.asarray(driver.all_releases, np.int64).reshape(-1, 4)
    summary["pids"] = (driver.report or {}).get("pids", {})
    summary["state"] = state
    return summary


def run(cfg, container: Mapping, output_dir, overrides, checkpoint_options) -> dict[str, Any]:
    """``jdo.train.run`` for ``backend=ray``; ``checkpoint_options()`` is the runner's policy
    (called after the config was checked, before anything is written)."""
    from omegaconf import OmegaConf

    problem, spec = prepare(cfg, container)
    checkpoint = checkpoint_options()
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True) if isinstance(cfg, DictConfig) else None
    return train(
        problem,
        spec,
        container,
        output_dir=output_dir,
        checkpoint=checkpoint,
        config_yaml=config_yaml,
        overrides=overrides,
    )
