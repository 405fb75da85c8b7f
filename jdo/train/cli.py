"""Hydra entry point: ``jdo-train [overrides]`` (or ``python -m jdo.train.cli``, or
``python -m experiments.train`` in a checkout); see ``jdo/conf/config.yaml``.

A thin wrapper around :func:`jdo.train.run`; ``main`` returns the summary's
``objective.metric`` (what ``hydra/sweeper=optuna`` optimizes, see :func:`objective_value`).
Exit statuses: 0 done; 1 a Hydra composition
error; 2 a bad config or input (one line naming the key; nothing written over); 3 a non-finite
or diverging loss (the last good checkpoint is kept); 4 a peer process was lost (multi-process);
75 stopped by SIGTERM/SIGUSR2 after a checkpoint, 130 by Ctrl-C (run the same command to
resume). The run directory gets config.yaml,
metrics.jsonl, summary.json and checkpoints/.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import jdo.conf  # noqa: F401 - registers the ${jdo_run_id:} resolver of the run directories
from jdo.train.sweeps import register_presets
from jdo.train.tracker import importable

log = logging.getLogger("jdo")

SUMMARY_KEYS = (
    "steps",
    "workers",
    "lifting",
    "train/loss",
    "eval/avg_model/loss",
    "eval/avg_model/accuracy",
    "eval/workers/accuracy_mean",
    "eval/workers/accuracy_min",
    "train/episode_return",
    "eval/return",
    "eval/return_min",
    "eval/return_greedy",
    "train/env_steps",
    "consensus",
    "dist_to_opt",
    "bytes/step",
    "bytes/step_payload",
    "bytes/step_device",
    "bytes/step_quiet",
    "bytes/total",
    "bytes/wire_per_update",
    "steps_per_s",
    "samples_per_s",
    "env_steps_per_s",
    "skipped_steps",
    "compile_s",
    "train_s",
    "eval_s",
    "checkpoint_s",
    "wall_s",
    "time/total",
    "time/compute",
    "time/comm",
    "time/wait",
    # a simulated asynchronous parameter server
    "asynchrony/updates",
    "asynchrony/gradients",
    "staleness/mean",
    # backend=ray
    "train/objective_gap",
    "updates",
    "updates_per_s",
    "staleness/max",
    "ssp/max_lead",
    "startup_s",
)


def summary_table(summary: dict) -> str:
    rows = [(k, summary[k]) for k in SUMMARY_KEYS if k in summary]
    width = max(len(k) for k, _ in rows)

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:,.4f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return "\n".join(f"  {k:<{width}}  {fmt(v)}" for k, v in rows)


def _simulate_cpu_devices(cfg: DictConfig) -> None:
    """Lets the shard_map lifting (or vmap over several devices) run on a CPU-only machine;
    must happen before JAX starts (in a --multirun sweep the first job's value holds for the
    whole process). ``auto``: as many devices as this config uses (none simulated for one, which
    saves 2-3 s of start-up; 8 in a sweep, whose later jobs may need them)."""
    count = cfg.get("cpu_devices")
    if count == "auto":
        count = _devices_needed(cfg)
    if count is None or "jax" in sys.modules:
        return
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        print(
            f"error: cpu_devices: must be a positive integer, auto or null, got {count!r}",
            file=sys.stderr,
        )
        sys.exit(2)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _devices_needed(cfg: DictConfig) -> int | None:
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return 8
    lifting = cfg.get("lifting") or {}
    needed = cfg.get("workers") if "shard_map" in str(lifting.get("_target_")) else None
    needed = needed or lifting.get("devices")
    return (
        needed if isinstance(needed, int) and not isinstance(needed, bool) and needed > 1 else None
    )


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    log.error(message)
    sys.exit(status)


def _deterministic_gpu(enabled) -> None:
    """Deterministic GPU kernels (no atomics, fixed autotuning), so a resumed run is
    bit-identical on GPUs too (measured on an H200: without it a resumed run differed in the
    last bits, with it it matched). No effect on CPUs. Must happen before JAX starts."""
    if not isinstance(enabled, bool):
        print(f"error: deterministic: must be true or false, got {enabled!r}", file=sys.stderr)
        sys.exit(2)
    flags = os.environ.get("XLA_FLAGS", "")
    if enabled and "xla_gpu_deterministic_ops" not in flags and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def _require_rl_extra(task) -> None:
    """RL tasks need the ``rl`` extra (gymnax, gymnasium): say so in one line."""
    if task.get("kind") != "rl":
        return
    try:
        import gymnasium  # noqa: F401
        import gymnax  # noqa: F401
    except ImportError:
        _fail(
            "task: reinforcement-learning tasks need gymnax and gymnasium: pip install 'jdo[rl]'", 2
        )


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _sweeper_reads_objective() -> bool:
    """Whether this job's return value is read: a --multirun with a sweeper other than Hydra's
    basic one (which ignores it), e.g. ``hydra/sweeper=optuna``."""
    from hydra.types import RunMode

    config = HydraConfig.get()
    return config.mode == RunMode.MULTIRUN and config.sweeper.get("_target_") != BASIC_SWEEPER


def _check_direction(objective, direction) -> None:
    """A sweeper told another direction than ``objective.direction`` (``hydra.sweeper.direction=``
    given directly): one line, before anything trains."""
    wanted = (objective or {}).get("direction")
    if direction is not None and str(direction) != wanted:
        _fail(
            f"hydra.sweeper.direction: {direction} but objective.direction is {wanted}: set "
            "objective.direction (hydra/sweeper=optuna follows it)",
            2,
        )


def worst_value(objective) -> float:
    """What a sweep sees for a run that diverged: -inf when maximizing, +inf when minimizing."""
    return -math.inf if (objective or {}).get("direction") == "maximize" else math.inf


def objective_value(summary: dict, objective, required: bool) -> float | None:
    """The summary's ``objective.metric`` (a non-finite value becomes :func:`worst_value`), or
    None when it is absent and not ``required``; absent and ``required``: a ``ConfigError``
    naming the key and the summary's metrics."""
    from jdo.train import ConfigError

    metric = (objective or {}).get("metric")
    if metric is None or metric not in summary:
        if not required:
            return None
        numeric = sorted(
            k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        raise ConfigError(
            "objective.metric",
            f"{metric!r} is not in this run's summary; available: {', '.join(numeric)}",
        )
    value = float(summary[metric])
    return value if math.isfinite(value) else worst_value(objective)


@hydra.main(version_base="1.3", config_path="pkg://jdo.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    _simulate_cpu_devices(cfg)
    _deterministic_gpu(cfg.get("deterministic", True))
    _require_rl_extra(cfg.task)
    from jdo.train import distributed
    from jdo.train.preemption import (
        EXIT_CONFIG,
        EXIT_INTERRUPTED,
        EXIT_NONFINITE,
        EXIT_PREEMPTED,
        Preempted,
    )

    logging.getLogger("jax").setLevel(logging.WARNING)  # backend probing, distributed chatter
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    try:
        multi = distributed.initialize(cfg.get("distributed"))
    except ValueError as e:
        _fail(str(e), EXIT_CONFIG)
    import jax

    if multi:
        _log_from_process_0(jax.process_index())
        log.info(
            "process %d of %d (%d local devices of %d)",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )
    from jdo.train import ConfigError, run
    from jdo.train.loop import NonFiniteError

    output_dir = HydraConfig.get().runtime.output_dir
    sweeping = _sweeper_reads_objective()
    if sweeping:
        _check_direction(cfg.get("objective"), HydraConfig.get().sweeper.get("direction"))
    try:
        overrides = list(HydraConfig.get().overrides.task)
        summary = run(cfg, output_dir=output_dir, overrides=overrides)
        value = objective_value(summary, cfg.get("objective"), required=sweeping)
    except ConfigError as e:
        distributed.finish()  # every process stops alike: not a lost peer
        _fail(str(e), EXIT_CONFIG)
    except NonFiniteError as e:
        distributed.finish()
        if sweeping:  # a diverged trial is a result, not a crash: the sweep goes on
            worst = worst_value(cfg.get("objective"))
            log.error("%s; the sweeper sees objective %s", e, worst)
            return worst
        _fail(str(e), EXIT_NONFINITE)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("interrupted (no checkpoint taken)", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Preempted as e:
        distributed.finish()
        log.warning("%s", e)
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED if e.signum == signal.SIGINT else EXIT_PREEMPTED)
    except jax.errors.JaxRuntimeError:
        if multi:  # a collective failed: if a peer died, the watchdog names it and exits 4
            timeout = (cfg.get("distributed") or {}).get("heartbeat_timeout_s") or 20
            distributed.await_watchdog(timeout + 5)
        raise
    distributed.finish()
    if jax.process_index() == 0:
        log.info("results (%s):\n%s", output_dir, summary_table(summary))
    if value is not None and sweeping:
        log.info("objective %s = %s", cfg.objective.metric, value)
    return value


def _log_from_process_0(index: int) -> None:
    """In a multi-process run, processes other than 0 log warnings and errors only, each line
    marked with the process (process 0 logs everything, to the console and train.log)."""
    if index == 0:
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    marked = logging.Formatter(f"[process {index}] %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        handler.setFormatter(marked)


def _check_run_dir(argv: list[str]) -> None:
    """Hydra makes the run directory before ``main`` runs (and fails with a traceback): check
    a ``hydra.run.dir=`` override first and fail with one line instead."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            path = os.path.abspath(arg.split("=", 1)[1])
            parent = path
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                what = "is not a directory" if not os.path.isdir(parent) else "is not writable"
                print(
                    f"error: hydra.run.dir: cannot create {path}: {parent} {what}", file=sys.stderr
                )
                sys.exit(2)


# hydra/<group>=<option> -> (modules it imports, the extra that installs them)
PLUGINS = {
    "hydra/sweeper=optuna": (("optuna", "hydra_plugins.hydra_optuna_sweeper"), "sweep"),
    "hydra/launcher=ray": (("ray", "hydra_plugins.hydra_ray_launcher"), "ray"),
}
DIRECTIONS = ("maximize", "minimize")
OLD_LOGGER = re.compile(r"^\+*logger\.(tensorboard|mlflow|wandb)=(true|false)$", re.IGNORECASE)


def _check_plugins(argv: list[str]) -> None:
    """A sweeper or launcher whose plugin is not installed: one line naming the extra (Hydra
    itself fails later, listing config groups), and the old ``logger.tensorboard=true``: one
    line naming the list syntax (Hydra would say the key is not in the config)."""
    for arg in argv:
        choice = arg.lstrip("+").replace(" ", "")
        if choice in PLUGINS:
            modules, extra = PLUGINS[choice]
            missing = [m for m in modules if not importable(m)]
            if missing:
                print(
                    f"error: {choice} needs the {extra} extra (no module {missing[0]}): "
                    f"pip install 'jdo[{extra}]'",
                    file=sys.stderr,
                )
                sys.exit(2)
        if arg.startswith("objective.direction=") and arg.split("=", 1)[1] not in DIRECTIONS:
            # checked here too: hydra/sweeper=optuna reads it before any job runs
            print(
                f"error: objective.direction: must be one of {', '.join(DIRECTIONS)}, "
                f"got {arg.split('=', 1)[1]!r}",
                file=sys.stderr,
            )
            sys.exit(2)
        old = OLD_LOGGER.match(arg)
        if old:
            print(
                f"error: {arg}: trackers are chosen as a list now: logger=[{old.group(1)}] "
                "(metrics.jsonl is always written; several: logger=[tensorboard,mlflow,wandb])",
                file=sys.stderr,
            )
            sys.exit(2)


def cli() -> None:
    """``jdo-train``: checks a ``hydra.run.dir=`` override and the plugins the command line
    selects, then runs Hydra's ``main``."""
    _check_run_dir(sys.argv[1:])
    _check_plugins(sys.argv[1:])
    register_presets()
    main()


if __name__ == "__main__":
    cli()
