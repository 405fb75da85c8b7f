"""The restore phase of :func:`jdo.train.loop.fit`: the state, fresh or from the newest good
checkpoint (onto this run's lifting and devices: workers are logical), regrouped onto another
worker count with ``elastic="average"``."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jdo.train.checkpoint import Checkpointer, IncompatibleCheckpoint
from jdo.train.config import ConfigError
from jdo.train.elastic import regroup
from jdo.train.program import place

log = logging.getLogger("jdo")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Where and when ``fit`` checkpoints, and how it resumes.

    Attributes:
      directory: the checkpoint folder; ``fit`` resumes from its newest good checkpoint.
      every: steps between checkpoints (a multiple of ``log_every``); None: by time only.
      every_s: at most this many seconds between checkpoints (checked at logging steps);
        None: by steps only. Both None: only at the end (and on preemption).
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
    every_s: float | None = None
    keep_last: int = 3
    keep_every: int | None = None
    async_save: bool = True
    elastic: str = "none"
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check_meta: Callable[[Mapping[str, Any]], None] | None = None


def _report_corrupt(message: str) -> None:
    log.warning(message)
    print(f"warning: {message}", file=sys.stderr)


def _init_keys(run):
    keys = jax.random.split(run.init_key, run.opts.workers)
    return jax.random.wrap_key_data(place(jax.random.key_data(keys), run.program.per_worker))


def restore_or_init(run) -> None:
    """Sets ``run.state`` (and ``step``, ``skipped``, ``resumed``, ``ckpt``)."""
    opts, program = run.opts, run.program
    keys = _init_keys(run)
    abstract = jax.eval_shape(program.init, run.exp.params, keys)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=program.per_worker), abstract
    )
    found = None
    if opts.checkpoint is not None:
        c = opts.checkpoint
        run.ckpt = Checkpointer(
            c.directory, keep_last=c.keep_last, keep_every=c.keep_every, async_save=c.async_save
        )
        try:
            found = run.ckpt.restore_latest(_target(run, abstract), on_corrupt=_report_corrupt)
        except IncompatibleCheckpoint as e:
            raise ConfigError("checkpoint", f"{e}; use another output directory") from None
    if found is None:
        run.state = _fresh_state(run, keys)
        return
    start, restored, meta = found
    if start > opts.steps:
        raise ConfigError(
            "trainer.steps",
            f"the checkpoint in {opts.checkpoint.directory} is "
            f"at step {start}: use trainer.steps >= {start}, or another output "
            "directory",
        )
    run.step = start
    run.skipped = int(meta.get("skipped_steps", 0))
    run.sent = meta.get("bytes_sent")
    run.first_loss = meta.get("first_loss")
    run.resumed = {"step": start, "path": run.ckpt.path(start)}
    if int(meta.get("workers", opts.workers)) == opts.workers:
        run.state = restored
    else:  # checkpoint.elastic=average
        params = regroup(jax.device_get(program.params_of(restored)), opts.workers)
        run.state = program.init_per_worker(place(params, program.per_worker), keys)
        run.resumed["regrouped_from"] = int(meta["workers"])
    log.info("resumed from %s (step %d)", run.resumed["path"], start)


def per_worker_params(init_params, seed: int, workers: int, sharding):
    """Stacked ``[W, ...]`` params, worker ``i``'s from ``init_params(fold_in(key(seed), i))``
    (each worker initialises independently), placed with ``sharding``."""
    base = jax.random.key(seed)
    make = jax.vmap(lambda i: init_params(jax.random.fold_in(base, i)))
    return jax.jit(make, out_shardings=sharding)(jnp.arange(workers))


def _fresh_state(run, keys):
    """``trainer.init``: ``shared`` (every worker from ``exp.params``) or ``per_worker``."""
    opts, program, exp = run.opts, run.program, run.exp
    if opts.init == "shared":
        return program.init(exp.params, keys)
    if exp.init_params is None:
        raise ConfigError(
            "trainer.init", "per_worker needs a model the runner can initialise (init_params)"
        )
    params = per_worker_params(exp.init_params, opts.seed, opts.workers, program.per_worker)
    return program.init_per_worker(params, keys)


def _target(run, abstract):
    """``target(meta)``: the abstract state a checkpoint restores onto, after its metadata
    was checked (another worker count only with ``elastic="average"``)."""
    opts = run.opts

    def target(meta):
        if opts.checkpoint.check_meta is not None:
            opts.checkpoint.check_meta(meta)
        old = int(meta.get("workers", opts.workers))
        if old == opts.workers:
            return abstract
        if opts.checkpoint.elastic != "average":
            raise ConfigError(
                "workers",
                f"the checkpoint in {opts.checkpoint.directory} has "
                f"{old} workers, this run {opts.workers}; set "
                "checkpoint.elastic=average to regroup its workers, or use "
                "another output directory",
            )
        # replicated on this run's devices: every process holds all old workers
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                (old, *x.shape[1:]), x.dtype, sharding=run.program.replicated
            ),
            abstract,
        )

    return target
