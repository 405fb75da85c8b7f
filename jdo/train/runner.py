"""The runner: config -> data, model, algorithm -> lifted, jitted chunks of K steps -> metrics.

``run(cfg)`` is what ``python -m experiments.train`` calls; ``build`` and ``fit`` are the two
halves for notebooks that want their own algorithm or data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from omegaconf import DictConfig, OmegaConf

from jdo import comm
from jdo._axis import WORKERS
from jdo.data import sample_batch
from jdo.lifting import lift
from jdo.train.build import build
from jdo.train.checkpoint import Checkpointer, IncompatibleCheckpoint
from jdo.train.config import RESUME_MAY_DIFFER, ConfigError, config_differences, validate
from jdo.train.elastic import regroup
from jdo.train.evaluate import make_evaluate
from jdo.train.experiment import Experiment
from jdo.train.guard import guard_nonfinite
from jdo.train.mesh import make_mesh
from jdo.train.preemption import Preempted, PreemptionWatch
from jdo.train.tracker import JsonlTracker, MultiTracker, TensorBoardTracker

log = logging.getLogger("jdo")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Where and when ``fit`` checkpoints, and how it resumes.

    Attributes:
      directory: the checkpoint folder; ``fit`` resumes from its newest good checkpoint.
      every: steps between checkpoints (a multiple of ``log_every``); None: only at the end
        (and on preemption).
      keep_last, keep_every: orbax's ``max_to_keep`` and ``keep_period``.
      async_save: write in the background (the step loop is blocked only by the copy).
      elastic: ``"none"``: a checkpoint with another worker count is refused; ``"average"``:
        its workers' params are regrouped (:func:`jdo.train.elastic.regroup`) and the
        algorithm state is re-initialised from them (optimizer moments restart).
      meta: JSON saved with every checkpoint (``run`` puts the resolved config there).
      check_meta: called with a checkpoint's metadata before it is restored; raises
        :class:`ConfigError` when the checkpoint does not belong to this run.
    """

    directory: str
    every: int | None = None
    keep_last: int = 3
    keep_every: int | None = None
    async_save: bool = True
    elastic: str = "none"
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check_meta: Callable[[Mapping[str, Any]], None] | None = None


@dataclasses.dataclass(frozen=True)
class Faults:
    """Fault injection for tests: SIGKILL this process once step ``kill_at_step`` is done,
    before its own checkpoint and after the earlier ones are committed (a kill between
    checkpoints); or, with ``in_save``, right after its asynchronous save started."""

    kill_at_step: int | None = None
    in_save: bool = False

    def maybe_kill(self, step: int, in_save: bool, state, ckpt: Checkpointer | None) -> None:
        if self.kill_at_step == step and self.in_save == in_save:
            if ckpt is not None and not in_save:
                ckpt.wait()
            jax.block_until_ready(state)
            log.warning("fault injection: SIGKILL at step %d%s", step, " (in save)" * in_save)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


class NonFiniteError(FloatingPointError):
    """A NaN/inf loss or update with ``nonfinite="stop"``."""


def _worker_mesh(workers: int, lifting: str, devices: int) -> Mesh:
    """shard_map: one worker per device; vmap: the worker axis spread over ``devices``."""
    if lifting == "shard_map":
        return make_mesh(workers)
    if workers % devices or devices > jax.device_count():
        raise ValueError(f"the vmap lifting spreads workers={workers} over devices={devices}: "
                         f"devices must divide workers and be <= {jax.device_count()}")  # fmt: skip
    return make_mesh(devices)


def _place(tree, sharding):
    """Host arrays (the same on every process) -> global arrays with ``sharding``."""
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
        tree,
    )


def fit(
    exp: Experiment,
    *,
    workers: int,
    steps: int,
    batch_size: int | None,
    lifting: str = "vmap",
    devices: int = 1,
    log_every: int = 50,
    eval_every: int = 250,
    eval_batch_size: int = 1024,
    seed: int = 0,
    output_dir: str | None = None,
    tensorboard: bool = False,
    progress: bool = True,
    checkpoint: CheckpointOptions | None = None,
    nonfinite: str = "stop",
    faults: Faults = Faults(),
    config_yaml: str | None = None,
) -> dict[str, Any]:
    """Trains ``exp`` for ``steps`` steps, ``log_every`` steps per jitted call.

    Every random draw (batches, compression, participation) comes from
    ``fold_in(fold_in(key(seed), worker), step)``, so a run resumed from a checkpoint is
    bit-identical to one that never stopped. With ``checkpoint``, the newest good checkpoint
    in ``checkpoint.directory`` is restored first (onto this run's lifting and devices: workers
    are logical), one is saved every ``checkpoint.every`` steps and at the end, and SIGTERM or
    SIGUSR2 save one at the next chunk boundary and raise
    :class:`~jdo.train.preemption.Preempted`. ``nonfinite``: ``"stop"`` raises
    :class:`NonFiniteError` naming the step, the worker and the last good checkpoint;
    ``"skip"`` drops such steps on every worker and counts them (``skipped_steps``).

    ``lifting="vmap"`` with ``devices > 1`` spreads the worker axis over that many devices
    (``workers / devices`` per device; XLA's partitioner turns the batched collectives into
    cross-device ones).

    Returns the summary (also written to ``output_dir/summary.json``); per-chunk metrics go to
    ``output_dir/metrics.jsonl``; ``config_yaml`` is written to ``output_dir/config.yaml`` once
    the checkpoint (if any) was accepted. Returns the final state under the ``"state"`` key.
    """
    for name, value in (("steps", steps), ("eval_every", eval_every)):
        if value < 1 or value % log_every:
            raise ValueError(f"{name}={value} must be a positive multiple of log_every={log_every}")
    every = checkpoint.every if checkpoint is not None else None
    if every is not None and (every < 1 or every % log_every):
        raise ValueError(f"checkpoint every={every} must be a positive multiple of "
                         f"log_every={log_every}")  # fmt: skip
    with PreemptionWatch() as watch:  # from the start: a signal during compile counts
        algo = guard_nonfinite(exp.algorithm, nonfinite)
        num_chunks = steps // log_every
        writer = output_dir is not None and jax.process_index() == 0

        # -- mesh and placement --------------------------------------------------------------------
        mesh = _worker_mesh(workers, lifting, devices)
        per_worker = NamedSharding(mesh, P(WORKERS))
        replicated = NamedSharding(mesh, P())
        data = _place(tuple(exp.data), per_worker) if exp.data is not None else ()
        key = jax.random.key(seed)
        init_key, run_key = jax.random.split(key)

        # -- per-worker chunk of K steps, lifted once ----------------------------------------------
        def worker_step(state, data, key, t):
            k = jax.random.fold_in(jax.random.fold_in(key, comm.worker_index()), t)
            batch_key, step_key = jax.random.split(k)
            batch = sample_batch(*data, batch_key, batch_size) if data else None
            return algo.step(state, batch, step_key)

        def worker_chunk(state, data, key, step0):
            body = lambda s, t: worker_step(s, data, key, t)
            return jax.lax.scan(body, state, step0 + jnp.arange(log_every))

        shard_mesh = mesh if lifting == "shard_map" else None
        lift_ = functools.partial(lift, lifting=lifting, mesh=shard_mesh)
        chunk = jax.jit(
            lift_(worker_chunk, in_axes=(0, 0, None, None)),
            donate_argnums=0,
            out_shardings=(per_worker, per_worker),
        )
        init = jax.jit(lift_(algo.init, in_axes=(None, 0)), out_shardings=per_worker)
        init_per_worker = jax.jit(lift_(algo.init, in_axes=(0, 0)), out_shardings=per_worker)
        init_keys = _place(jax.random.key_data(jax.random.split(init_key, workers)), per_worker)
        init_keys = jax.random.wrap_key_data(init_keys)

        # -- state: fresh, or restored from the newest good checkpoint -----------------------------
        t0 = time.perf_counter()
        state = init(exp.params, init_keys)
        params_of = jax.jit(jax.vmap(algo.params))  # Algorithm.params is per worker
        ckpt, start, skipped, resumed = None, 0, 0, None
        if checkpoint is not None:
            ckpt = Checkpointer(
                checkpoint.directory, keep_last=checkpoint.keep_last,
                keep_every=checkpoint.keep_every, async_save=checkpoint.async_save,
            )  # fmt: skip
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
            )

            def target(meta):
                if checkpoint.check_meta is not None:
                    checkpoint.check_meta(meta)
                old = int(meta.get("workers", workers))
                if old == workers:
                    return abstract
                if checkpoint.elastic != "average":
                    raise ConfigError("workers", f"the checkpoint in {checkpoint.directory} has "
                                      f"{old} workers, this run {workers}; set "
                                      "checkpoint.elastic=average to regroup its workers, or use "
                                      "another output directory")  # fmt: skip
                # replicated on this run's devices: every process holds all old workers
                return jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct((old, *x.shape[1:]), x.dtype,
                                                   sharding=replicated),
                    abstract,
                )  # fmt: skip

            try:
                found = ckpt.restore_latest(target, on_corrupt=_report_corrupt)
            except IncompatibleCheckpoint as e:
                raise ConfigError("checkpoint", f"{e}; use another output directory") from None
            if found is not None:
                start, restored, meta = found
                skipped = int(meta.get("skipped_steps", 0))
                resumed = {"step": start, "path": ckpt.path(start)}
                if start % log_every:
                    raise ConfigError("trainer.log_every", f"the checkpoint is at step {start}, "
                                      f"not a multiple of log_every={log_every}")  # fmt: skip
                if start > steps:
                    raise ConfigError("trainer.steps", f"the checkpoint in "
                                      f"{checkpoint.directory} is at step {start}: use "
                                      f"trainer.steps >= {start}, or another output "
                                      "directory")  # fmt: skip
                if int(meta.get("workers", workers)) == workers:
                    state = restored
                else:  # checkpoint.elastic=average
                    new_params = _place(regroup(jax.device_get(params_of(restored)), workers),
                                        per_worker)  # fmt: skip
                    state = init_per_worker(new_params, init_keys)
                    resumed["regrouped_from"] = int(meta["workers"])
                log.info("resumed from %s (step %d)", resumed["path"], start)

        if writer and config_yaml is not None:  # after any refusal to resume: nothing lost
            with open(os.path.join(output_dir, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(config_yaml)

        # -- compile (training chunk and evaluation), count bytes ----------------------------------
        step0 = jnp.zeros((), jnp.int32)
        compiled = chunk.lower(state, data, run_key, step0).compile()
        one_worker = lambda tree: jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree
        )
        count = lambda conditionals: comm.worker_bytes(
            worker_step, workers, one_worker(state), one_worker(data), run_key, step0,
            in_axes=(0, 0, None, None), platform=jax.default_backend(),
            conditionals=conditionals,
        )  # fmt: skip
        step_bytes = count("max")  # a step that communicates
        bytes_per_step = sum(step_bytes.values())
        quiet_bytes = sum(count("min").values())  # periodic algorithms' other steps
        evaluate = make_evaluate(exp, eval_batch_size).lower(params_of(state)).compile()
        gather = jax.jit(lambda tree: tree, out_shardings=replicated)  # for multi-process hosts
        compile_s = time.perf_counter() - t0

        # -- loop: dispatch chunk c+1, then log chunk c while it runs ------------------------------
        trackers = []
        if writer:
            resume_step = start  # drop lines a killed earlier attempt wrote after this step
            trackers.append(JsonlTracker(os.path.join(output_dir, "metrics.jsonl"), resume_step))
            if tensorboard:
                trackers.append(TensorBoardTracker(os.path.join(output_dir, "tb"), resume_step))
        tracker = MultiTracker(trackers)
        bar = _progress(steps - start, progress)
        samples_per_step = (  # per worker
            batch_size or float(np.mean(exp.data.count)) if exp.data is not None else 0
        )
        record: dict[str, Any] = {}
        save_block_s: list[float] = []
        env_steps_before = None if resumed else 0.0  # RL's running total at the last chunk
        t_start = t_last = time.perf_counter()

        def finish(pending):
            """Host side of a finished chunk: checks, records, logs (waits for the chunk)."""
            nonlocal record, t_last, skipped, env_steps_before
            done_step, done_metrics, done_params = pending
            metrics = jax.device_get(gather(done_metrics))  # each [W, K]
            bad = metrics.pop("nonfinite", None)
            if bad is not None and np.any(bad):
                k = int(np.argmax(np.any(bad, axis=0)))  # the chunk's first bad step
                workers_bad = np.flatnonzero(bad[:, k]).tolist()
                raise NonFiniteError(
                    f"non-finite loss or update at step {done_step - log_every + k + 1} (workers "
                    f"{workers_bad}); training stopped; {_last_good(ckpt)}"
                )
            skips = metrics.pop("skipped", None)
            mask = None
            if skips is not None:
                mask = skips[0] == 0  # the same on every worker
                skipped += int(np.sum(skips[0]))
            record = _train_record(metrics, done_step, bytes_per_step, quiet_bytes, mask)
            if skips is not None:
                record["skipped_steps"] = skipped
            now = time.perf_counter()
            record["steps_per_s"] = log_every / max(now - t_last, 1e-9)
            if samples_per_step:  # not for tasks that make their own data (RL)
                record["samples_per_s"] = record["steps_per_s"] * workers * samples_per_step
            if "train/env_steps" in record:  # RL: environment steps of all workers per second
                if env_steps_before is not None:
                    done = record["train/env_steps"] - env_steps_before
                    record["env_steps_per_s"] = done / max(now - t_last, 1e-9)
                env_steps_before = record["train/env_steps"]
            t_last = now
            if done_params is not None:
                record.update({k: float(v) for k, v in evaluate(done_params).items()})
            tracker.log(done_step, record)
            bar.update(log_every)
            bar.set_postfix(loss=f"{record['train/loss']:.4f}", sps=f"{record['steps_per_s']:.0f}")
            if done_params is not None:
                log.info(_line(done_step, record))

        pending = None
        try:
            for c in range(start // log_every, num_chunks):
                end = (c + 1) * log_every
                state, metrics = compiled(state, data, run_key, jnp.int32(c * log_every))
                if pending is not None:
                    finish(pending)
                is_eval = end % eval_every == 0 or end == steps
                # A fresh array (params_of copies): the next chunk donates the state.
                pending = (end, metrics, params_of(state) if is_eval else None)
                faults.maybe_kill(end, False, state, ckpt)
                # A signal during the last chunk: the run finishes normally instead.
                stop = _agree(watch.signum is not None) and end < steps
                if ckpt is not None and (stop or end == steps or (every and end % every == 0)):
                    finish(pending)  # never checkpoint a non-finite state
                    pending = None
                    meta = {**checkpoint.meta, "workers": workers, "skipped_steps": skipped}
                    save_block_s.append(ckpt.save(end, state, meta))
                    faults.maybe_kill(end, True, state, ckpt)
                if stop:
                    if pending is not None:
                        finish(pending)
                    if ckpt is not None:
                        ckpt.close()
                    watch.hand_on()
                    signum = watch.signum or signal.SIGTERM  # another process got the signal
                    raise Preempted(signum, end, ckpt.path(end) if ckpt else None)
            if pending is not None:
                finish(pending)
                pending = None
            if ckpt is not None:
                ckpt.close()  # waits for the last save
        finally:
            bar.close()
            tracker.close()
        if not record:  # resumed at the end: nothing left to train
            record = {k: float(v) for k, v in evaluate(params_of(state)).items()}
        wall_s = time.perf_counter() - t_start
        trained = steps - start
        summary = {
            "workers": workers,
            "lifting": lifting,
            "steps": steps,
            **record,
            "bytes/step_by_kind": step_bytes,
            "compile_s": compile_s,
            "wall_s": wall_s,
            "steps_per_s": trained / wall_s,  # this session, evaluations and checkpoints included
        }
        if samples_per_step:
            summary["samples_per_s"] = trained / wall_s * workers * samples_per_step
        if "train/env_steps" in record and not resumed:  # RL, the whole run like steps_per_s
            summary["env_steps_per_s"] = record["train/env_steps"] / wall_s
        if resumed:
            summary["resumed_from"] = resumed
        if save_block_s:
            summary["checkpoint/save_block_s"] = float(np.mean(save_block_s))
        if writer and trained > 0:  # a rerun of a finished run keeps its summary
            with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2, default=float)
        summary["state"] = state
        return summary


def _agree(flag: bool) -> bool:
    """True on every process if it is True on any (a signal reaches processes at different
    steps; they must stop at the same chunk boundary or their collectives would not match)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _report_corrupt(message: str) -> None:
    log.warning(message)
    print(f"warning: {message}", file=sys.stderr)


def _last_good(ckpt: Checkpointer | None) -> str:
    if ckpt is None:
        return "checkpointing is off"
    ckpt.wait()
    steps = ckpt.steps()
    if not steps:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {ckpt.path(steps[-1])} (step {steps[-1]})"


COUNTERS = ("env_steps",)  # metrics that are running totals over all workers


def _train_record(
    metrics, step: int, bytes_per_step: int, quiet_bytes: int, mask=None
) -> dict[str, float]:
    """Host-side metrics of one chunk (``metrics``: each ``[W, K]``; ``mask``: the ``[K]``
    steps to average, None = all). For algorithms that communicate on some steps only,
    ``bytes/step`` is a communicating step, ``bytes/step_quiet`` another step, and
    ``bytes/total`` the upper bound ``bytes/step · step``."""
    if mask is not None and not np.any(mask):  # every step of the chunk was skipped
        mask = None
        metrics = {k: np.full(np.shape(v), np.nan) for k, v in metrics.items()}
    keep = (lambda v: v[:, mask]) if mask is not None else (lambda v: v)
    # Counters (RL's env_steps: a running total) are read at the chunk's end, not averaged.
    counters = {k: float(np.max(np.asarray(v)[:, -1])) for k, v in metrics.items()
                if k in COUNTERS}  # fmt: skip
    per_worker = {k: np.mean(keep(np.asarray(v, np.float64)), axis=-1) for k, v in metrics.items()
                  if k not in COUNTERS}  # fmt: skip
    loss = per_worker["loss"]
    record = {"train/loss": float(loss.mean()), "train/loss_min": float(loss.min()),
              "train/loss_max": float(loss.max())}  # fmt: skip
    for k, v in per_worker.items():
        if k != "loss":
            record[f"train/{k}"] = float(v.mean())
    record.update({f"train/{k}": v for k, v in counters.items()})
    record["bytes/step"] = int(bytes_per_step)
    if quiet_bytes != bytes_per_step:
        record["bytes/step_quiet"] = int(quiet_bytes)
    record["bytes/total"] = int(bytes_per_step * step)
    return record


def _line(step: int, record: Mapping[str, float]) -> str:
    keys = ("train/loss", "eval/avg_model/loss", "eval/avg_model/accuracy", "consensus",
            "dist_to_opt", "steps_per_s")  # fmt: skip
    parts = [f"{k.split('/')[-1] if k.startswith('train') else k} {record[k]:.4g}"
             for k in keys if k in record]  # fmt: skip
    return f"step {step}: " + " | ".join(parts)


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    """A tqdm bar on stderr (never in Hydra's log file); a no-op when disabled or not a TTY."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5, leave=False)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _checkpoint_options(container: Mapping, output_dir: str | None) -> CheckpointOptions | None:
    """From the ``checkpoint`` config node; refuses (``ConfigError``, nothing written) to resume
    from a checkpoint of a different config unless ``checkpoint.resume=force``."""
    node = container["checkpoint"]
    if not node["enabled"] or output_dir is None:
        return None
    directory = os.path.join(output_dir, "checkpoints")
    force = node["resume"] == "force"
    may_differ = RESUME_MAY_DIFFER + (("workers", "topology.n") if node["elastic"] == "average"
                                      else ())  # fmt: skip

    def check_meta(meta):
        if force:
            return
        differences = config_differences(meta.get("config", {}), container, may_differ)
        if differences:
            differences.sort(key=lambda d: d[0] != "workers")  # the likeliest cause first
            key, old, new = differences[0]
            more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
            hint = "checkpoint.elastic=average to regroup its workers, " if key == "workers" else ""
            raise ConfigError(
                "checkpoint.resume",
                f"{directory} holds a checkpoint (step {meta.get('step')}) of a different "
                f"config: {key} was {old!r}, is now {new!r}{more}. Use another output "
                f"directory (hydra.run.dir=...), {hint}or checkpoint.resume=force to resume "
                "anyway",
            )

    # Check before anything in output_dir is written over. Every process opens the manager
    # (orbax synchronises processes when it opens one: all must, or none).
    with Checkpointer(directory) as existing:
        for step in reversed(existing.steps()):
            try:
                meta = existing.read_meta(step)
            except Exception:  # unreadable: restore_latest will report it
                continue
            check_meta(meta)
            break
    return CheckpointOptions(
        directory=directory,
        every=node["every"],
        keep_last=node["keep_last"],
        keep_every=node["keep_every"],
        async_save=node["async"],
        elastic=node["elastic"],
        meta={"config": container},
        check_meta=check_meta,
    )


def run(cfg: DictConfig | Mapping, output_dir: str | None = None) -> dict[str, Any]:
    """Validates ``cfg``, builds the experiment, trains it, writes the run directory.

    The run directory gets ``config.yaml`` (resolved), ``metrics.jsonl``, ``summary.json`` and
    ``checkpoints/``; running the same config into the same directory again resumes from the
    newest good checkpoint. Raises :class:`~jdo.train.ConfigError` before anything compiles
    (and before anything in ``output_dir`` is written over) if the config is bad.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as e:
        raise ConfigError("config", str(e)) from None
    validate(container)
    exp = build(cfg)
    if output_dir is not None:
        _check_writable(output_dir)
    checkpoint = _checkpoint_options(container, output_dir)
    trainer, fault = container["trainer"], container["fault"]
    return fit(
        exp,
        workers=container["workers"],
        steps=trainer["steps"],
        batch_size=trainer["batch_size"],
        lifting=container["lifting"]["name"],
        devices=container["lifting"].get("devices") or 1,
        log_every=trainer["log_every"],
        eval_every=trainer["eval_every"],
        eval_batch_size=trainer["eval_batch_size"],
        seed=container["seed"],
        output_dir=output_dir,
        tensorboard=bool(container["logger"]["tensorboard"]),
        progress=bool(trainer["progress"]),
        checkpoint=checkpoint,
        nonfinite=trainer["nonfinite"],
        faults=Faults(fault["kill_at_step"], fault["in_save"]),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
    )


def _check_writable(output_dir: str) -> None:
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".jdo-write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError("output_dir", f"cannot write to {output_dir}: {e.strerror}") from None
