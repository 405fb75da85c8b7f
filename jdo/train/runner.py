"""The entry point: ``run(cfg)`` validates a config, builds the experiment, decides the
checkpoint policy (where, how often, whether a checkpoint belongs to this run) and trains it
with :func:`jdo.train.loop.fit`. ``python -m experiments.train`` (``jdo-train``) calls it.

The pieces: :mod:`jdo.train.builder` (config -> :class:`~jdo.train.experiment.Experiment`),
:mod:`jdo.train.program` (the lifted, jitted step), :mod:`jdo.train.restore`,
:mod:`jdo.train.loop` (the host loop), :mod:`jdo.train.evaluate`, :mod:`jdo.train.records`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from jdo.train.builder import build
from jdo.train.checkpoint import Checkpointer
from jdo.train.clocked import clocked_experiment, cluster_from_config
from jdo.train.config import RESUME_MAY_DIFFER, ConfigError, config_differences, validate
from jdo.train.loop import Faults, fit
from jdo.train.mesh import lifting_of
from jdo.train.restore import CheckpointOptions

FAULT_ENV = "JDO_TEST_FAULT"  # test-only fault injection (see jdo.train.loop.Faults.from_env)


def _checkpoint_options(container: Mapping, output_dir: str | None) -> CheckpointOptions | None:
    """From the ``checkpoint`` config node; refuses (``ConfigError``, nothing written) to resume
    from a checkpoint of a different config unless ``checkpoint.resume=force``."""
    node = container["checkpoint"]
    if not node["enabled"] or output_dir is None:
        return None
    directory = os.path.join(output_dir, "checkpoints")
    force = node["resume"] == "force"
    may_differ = RESUME_MAY_DIFFER + (
        ("workers", "topology.n") if node["elastic"] == "average" else ()
    )

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
        every_s=node["every_s"],
        keep_last=node["keep_last"],
        keep_every=node["keep_every"],
        async_save=node["async"],
        elastic=node["elastic"],
        meta={"config": container},
        check_meta=check_meta,
    )


def run(
    cfg: DictConfig | Mapping, output_dir: str | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Validates ``cfg``, builds the experiment, trains it, writes the run directory.

    The run directory gets ``config.yaml`` (resolved), ``metrics.jsonl``, ``summary.json``
    (with the command line's ``overrides``) and ``checkpoints/``; running the same config into
    the same directory again resumes from the newest good checkpoint. Raises
    :class:`~jdo.train.ConfigError` before anything compiles (and before anything in
    ``output_dir`` is written over) if the config is bad.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as e:
        raise ConfigError("config", str(e)) from None
    validate(container)
    if container.get("backend", "spmd") == "ray":  # a real asynchronous parameter server
        from jdo.train import ray_run

        if output_dir is not None:
            _check_writable(output_dir)
        return ray_run.run(
            cfg,
            container,
            output_dir,
            tuple(overrides),
            lambda: _checkpoint_options(container, output_dir),
        )
    cluster = cluster_from_config(cfg.get("cluster"), container["workers"])
    exp = build(cfg, cluster=cluster)
    if output_dir is not None:
        _check_writable(output_dir)
    checkpoint = _checkpoint_options(container, output_dir)
    trainer, lifting = container["trainer"], lifting_of(container["lifting"])
    exp, clock = clocked_experiment(
        exp, cluster, container["workers"], trainer["batch_size"], trainer["steps"]
    )
    summary = fit(
        exp,
        workers=container["workers"],
        steps=trainer["steps"],
        batch_size=trainer["batch_size"],
        init=trainer.get("init", "shared"),
        lifting=lifting.name,
        devices=lifting.devices,
        chunk=lifting.chunk,
        map=lifting.map,
        nodes=lifting.nodes,
        log_every=trainer["log_every"],
        eval_every=trainer["eval_every"],
        eval_batch_size=trainer["eval_batch_size"],
        seed=container["seed"],
        output_dir=output_dir,
        logger=container.get("logger"),
        progress=bool(trainer["progress"]),
        checkpoint=checkpoint,
        nonfinite=trainer["nonfinite"],
        divergence=trainer["divergence"],
        call_seconds=trainer["call_seconds"],
        faults=Faults.from_env(os.environ.get(FAULT_ENV)),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        overrides=tuple(overrides),
        clock=clock,
        cluster=cluster,
    )
    return summary


def _check_writable(output_dir: str) -> None:
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".jdo-write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError("output_dir", f"cannot write to {output_dir}: {e.strerror}") from None
