"""The runner: config -> data, model, algorithm -> lifted, jitted chunks of K steps -> metrics.

``run(cfg)`` is what ``python -m experiments.train`` calls; ``build`` and ``fit`` are the two
halves for notebooks that want their own algorithm or data.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import hydra.utils
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from omegaconf import DictConfig, OmegaConf

from jdo import comm
from jdo._axis import WORKERS
from jdo.algorithms import Algorithm
from jdo.data import Dataset, WorkerData, make_loss, partition, sample_batch
from jdo.data.synthetic import optimum_of_parts
from jdo.lifting import lift
from jdo.models import functional
from jdo.train.config import ConfigError, validate
from jdo.train.mesh import make_mesh
from jdo.train.tracker import JsonlTracker, MultiTracker, TensorBoardTracker

log = logging.getLogger("jdo")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built on the host: no device work has happened yet."""

    algorithm: Algorithm
    apply: Callable  # apply(params, x) -> model output
    loss_fn: Callable  # loss_fn(params, batch, key) -> (loss, metrics)
    params: Any  # initial params, shared by every worker
    # Every worker's part of the training set, [W, n_max, ...]; None for tasks that make
    # their own data inside ``algorithm.step`` (reinforcement learning: step gets batch=None).
    data: WorkerData | None
    dataset: Dataset | None  # the test set, the data kind and a known optimum; None: no eval


# ----------------------------------------------------------------------------------------------
# Building from a config
# ----------------------------------------------------------------------------------------------


def _instantiate(node, key: str, **kwargs):
    """``node``'s ``_target_`` called with its config values and ``kwargs`` (Python objects
    such as a loss function or a topology, which Hydra cannot merge into a config)."""
    missing = sorted(OmegaConf.missing_keys(node)) if isinstance(node, DictConfig) else []
    if missing:
        raise ConfigError(missing[0], "is required (set it on the command line)")
    try:
        return hydra.utils.instantiate(node, _partial_=True)(**kwargs)
    except Exception as e:  # hydra wraps the factory's own error
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ConfigError(key, f"{type(cause).__name__}: {cause}") from None


def _factory_parameters(node, key: str) -> Mapping[str, inspect.Parameter]:
    """The parameters of the factory named by ``node._target_``."""
    try:
        return inspect.signature(hydra.utils.get_method(node["_target_"])).parameters
    except Exception:
        raise ConfigError(f"{key}._target_", f"cannot import {node['_target_']!r}") from None


def split_data(dataset: Dataset, cfg_partition: Mapping, num_workers: int, seed: int):
    """Index arrays, one per worker, from a ``partition`` config node."""
    name = cfg_partition["name"]
    try:
        if name == "iid":
            return partition.iid(len(dataset.x_train), num_workers, seed)
        if name == "dirichlet":
            return partition.dirichlet(
                dataset.y_train, num_workers, float(cfg_partition["alpha"]), seed
            )
        if name == "shard":
            return partition.by_shard(
                dataset.y_train, num_workers, int(cfg_partition["shards_per_worker"]), seed
            )
        if dataset.groups is None:
            raise ValueError(f"the {dataset.name} data has no natural partition")
        return partition.natural(dataset.groups, num_workers)
    except ValueError as e:
        raise ConfigError("partition", str(e)) from None


def build(cfg: Mapping) -> Experiment:
    """Data, model and algorithm from a validated config (see ``conf/``)."""
    if cfg["task"].get("kind") == "rl":  # environments instead of a dataset
        from jdo.train.rl import build_rl

        return build_rl(cfg)
    workers, seed = int(cfg["workers"]), int(cfg["seed"])
    dataset = _instantiate(cfg["task"]["data"], "task.data")
    parts = split_data(dataset, cfg["partition"], workers, seed)
    try:
        data = partition.stack(dataset.x_train, dataset.y_train, parts)
    except ValueError as e:
        raise ConfigError("workers", f"{e} ({len(dataset.x_train)} training samples for "
                          f"{workers} workers)") from None  # fmt: skip
    if dataset.optimum is not None:  # the optimum of the objective the workers actually share
        dataset = dataclasses.replace(dataset, optimum=optimum_of_parts(dataset, parts))
    model = _instantiate(
        cfg["model"], "model", in_shape=dataset.in_shape, num_outputs=dataset.num_outputs,
        rngs=nnx.Rngs(seed),
    )  # fmt: skip
    apply, params = functional(model)
    loss_fn = make_loss(apply, dataset.kind, dataset.l2)
    optimizer = _instantiate(cfg["optimizer"], "optimizer")
    extra, accepted = {}, _factory_parameters(cfg["algorithm"], "algorithm")
    if "topology" in accepted:
        topology = _instantiate(cfg["topology"], "topology")
        if topology.n != workers:
            raise ConfigError("topology.n", f"must equal workers ({workers}), got {topology.n}")
        extra["topology"] = topology
    if "compressor" in accepted:
        compressor = _instantiate(cfg["compression"], "compression")
        # An optional compressor (diloco's outer communication) stays off unless one is chosen.
        if (
            accepted["compressor"].default is inspect.Parameter.empty
            or compressor.name != "identity"
        ):
            extra["compressor"] = compressor
    algorithm = _instantiate(
        cfg["algorithm"], "algorithm", loss_fn=loss_fn, optimizer=optimizer, **extra
    )
    try:  # an algorithm may refuse the model at init (e.g. a Newton solve on a big model)
        jax.eval_shape(algorithm.init, params, jax.random.key(0))
    except ValueError as e:
        raise ConfigError("algorithm", str(e)) from None
    return Experiment(algorithm, apply, loss_fn, params, data, dataset)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _test_batches(dataset: Dataset, batch_size: int):
    n = len(dataset.x_test)
    num = -(-n // batch_size)
    pad = num * batch_size - n
    padded = lambda a: np.concatenate([a, np.repeat(a[:1], pad, 0)]).reshape(
        num, batch_size, *a.shape[1:]
    )
    weight = (np.arange(num * batch_size) < n).astype(np.float32).reshape(num, batch_size)
    return {"x": padded(dataset.x_test), "y": padded(dataset.y_test), "weight": weight}


def consensus_distance(params_stacked) -> jax.Array:
    """``(1/W) Σ_i ||x_i − x̄||²`` over all parameters of the stacked ``[W, ...]`` params."""
    sq = jax.tree.map(
        lambda x: jnp.sum(jnp.square(x - jnp.mean(x, axis=0))) / x.shape[0], params_stacked
    )
    return sum(jax.tree.leaves(sq))


def make_evaluate(exp: Experiment, batch_size: int):
    """``evaluate(params_stacked) -> metrics``: test metrics of the averaged model and of every
    worker (mean/min/max), the consensus distance, and the distance to a known optimum."""
    if exp.dataset is None:  # no test set: only the consensus distance
        return jax.jit(lambda params_stacked: {"consensus": consensus_distance(params_stacked)})
    batches = jax.device_put(_test_batches(exp.dataset, batch_size))
    optimum = exp.dataset.optimum
    if optimum is not None and jax.tree.structure(optimum) != jax.tree.structure(exp.params):
        optimum = None  # the known optimum is for another model (e.g. an MLP on least squares)

    def test_metrics(params):
        def one(batch):
            loss, metrics = exp.loss_fn(params, batch, None)
            total = jnp.sum(batch["weight"])
            return total, {"loss": loss * total, **{k: v * total for k, v in metrics.items()}}

        totals, sums = jax.lax.map(one, batches)
        return {k: jnp.sum(v) / jnp.sum(totals) for k, v in sums.items()}

    @jax.jit
    def evaluate(params_stacked):
        mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), params_stacked)
        out = {f"eval/avg_model/{k}": v for k, v in test_metrics(mean).items()}
        per_worker = jax.vmap(test_metrics)(params_stacked)
        for k, v in per_worker.items():
            out[f"eval/workers/{k}_mean"] = jnp.mean(v)
            out[f"eval/workers/{k}_min"] = jnp.min(v)
            out[f"eval/workers/{k}_max"] = jnp.max(v)
        out["consensus"] = consensus_distance(params_stacked)
        if optimum is not None:
            sq = jax.tree.map(lambda x, o: jnp.sum(jnp.square(x - o)), mean, optimum)
            out["dist_to_opt"] = jnp.sqrt(sum(jax.tree.leaves(sq)))
        return out

    return evaluate


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def fit(
    exp: Experiment,
    *,
    workers: int,
    steps: int,
    batch_size: int | None,
    lifting: str = "vmap",
    log_every: int = 50,
    eval_every: int = 250,
    eval_batch_size: int = 1024,
    seed: int = 0,
    output_dir: str | None = None,
    tensorboard: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains ``exp`` for ``steps`` steps, ``log_every`` steps per jitted call.

    Returns the summary (also written to ``output_dir/summary.json``); per-chunk metrics go to
    ``output_dir/metrics.jsonl``. Returns the final state under the ``"state"`` key.
    """
    for name, value in (("steps", steps), ("eval_every", eval_every)):
        if value < 1 or value % log_every:
            raise ValueError(f"{name}={value} must be a positive multiple of log_every={log_every}")
    algo, num_chunks = exp.algorithm, steps // log_every

    # -- mesh and placement -------------------------------------------------------------------
    mesh = make_mesh(workers) if lifting == "shard_map" else None
    place = (
        (lambda t: jax.device_put(t, NamedSharding(mesh, P(WORKERS))))
        if mesh is not None
        else jax.device_put
    )
    data = place(tuple(exp.data)) if exp.data is not None else ()
    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)

    # -- per-worker chunk of K steps, lifted once ------------------------------------------------
    def worker_step(state, data, key, t):
        k = jax.random.fold_in(jax.random.fold_in(key, comm.worker_index()), t)
        batch_key, step_key = jax.random.split(k)
        batch = sample_batch(*data, batch_key, batch_size) if data else None
        return algo.step(state, batch, step_key)

    def worker_chunk(state, data, key, step0):
        body = lambda s, t: worker_step(s, data, key, t)
        return jax.lax.scan(body, state, step0 + jnp.arange(log_every))

    chunk = jax.jit(
        lift(worker_chunk, lifting, mesh=mesh, in_axes=(0, 0, None, None)),
        donate_argnums=0,
    )
    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    init_keys = jax.random.split(init_key, workers)

    # -- compile (training chunk and evaluation), count bytes -----------------------------------
    t0 = time.perf_counter()
    state = init(exp.params, init_keys)
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
    params_of = jax.jit(jax.vmap(algo.params))  # Algorithm.params is per worker
    evaluate = make_evaluate(exp, eval_batch_size).lower(params_of(state)).compile()
    compile_s = time.perf_counter() - t0

    # -- loop: dispatch chunk c+1, then log chunk c while it runs -----------------------------
    trackers = []
    if output_dir is not None:
        trackers.append(JsonlTracker(os.path.join(output_dir, "metrics.jsonl")))
        if tensorboard:
            trackers.append(TensorBoardTracker(os.path.join(output_dir, "tb")))
    tracker = MultiTracker(trackers)
    bar = _progress(steps, progress)
    samples_per_step = (  # per worker
        batch_size or float(np.mean(exp.data.count)) if exp.data is not None else 0
    )
    record: dict[str, Any] = {}
    pending = None
    t_start = t_last = time.perf_counter()
    try:
        for c in range(num_chunks + 1):
            if c < num_chunks:
                state, metrics = compiled(state, data, run_key, jnp.int32(c * log_every))
            if pending is not None:
                done_step, done_metrics, done_params = pending
                record = _train_record(done_metrics, done_step, bytes_per_step, quiet_bytes)
                now = time.perf_counter()
                record["steps_per_s"] = log_every / max(now - t_last, 1e-9)
                record["samples_per_s"] = record["steps_per_s"] * workers * samples_per_step
                t_last = now
                if done_params is not None:
                    record.update({k: float(v) for k, v in evaluate(done_params).items()})
                tracker.log(done_step, record)
                bar.update(log_every)
                bar.set_postfix(
                    loss=f"{record['train/loss']:.4f}", sps=f"{record['steps_per_s']:.0f}"
                )
                if done_params is not None:
                    log.info(_line(done_step, record))
            if c < num_chunks:
                end = (c + 1) * log_every
                is_eval = end % eval_every == 0 or end == steps
                # A fresh array (params_of copies): the next chunk donates the state.
                params = params_of(state) if is_eval else None
                pending = (end, metrics, params)
    finally:
        bar.close()
        tracker.close()
    wall_s = time.perf_counter() - t_start
    summary = {
        "workers": workers,
        "lifting": lifting,
        "steps": steps,
        **record,
        "bytes/step_by_kind": step_bytes,
        "compile_s": compile_s,
        "wall_s": wall_s,
        "steps_per_s": steps / wall_s,  # the whole run, evaluations included
        "samples_per_s": steps / wall_s * workers * samples_per_step,
    }
    if output_dir is not None:
        with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    summary["state"] = state
    return summary


def _train_record(metrics, step: int, bytes_per_step: int, quiet_bytes: int) -> dict[str, float]:
    """Host-side metrics of one chunk (waits for it). For algorithms that communicate on some
    steps only, ``bytes/step`` is a communicating step, ``bytes/step_quiet`` another step, and
    ``bytes/total`` the upper bound ``bytes/step · step``."""
    metrics = jax.device_get(metrics)  # each [W, K]
    per_worker = {k: np.mean(np.asarray(v, np.float64), axis=-1) for k, v in metrics.items()}
    loss = per_worker["loss"]
    if not np.all(np.isfinite(loss)):
        bad = int(np.flatnonzero(~np.isfinite(loss))[0])
        raise FloatingPointError(f"non-finite training loss on worker {bad} by step {step}")
    record = {"train/loss": float(loss.mean()), "train/loss_min": float(loss.min()),
              "train/loss_max": float(loss.max())}  # fmt: skip
    for k, v in per_worker.items():
        if k != "loss":
            record[f"train/{k}"] = float(v.mean())
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


def run(cfg: DictConfig | Mapping, output_dir: str | None = None) -> dict[str, Any]:
    """Validates ``cfg``, builds the experiment, trains it, writes the run directory.

    The run directory gets ``config.yaml`` (resolved), ``metrics.jsonl`` and ``summary.json``.
    Raises :class:`~jdo.train.ConfigError` before anything compiles if the config is bad.
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
        try:
            os.makedirs(output_dir, exist_ok=True)
            OmegaConf.save(cfg, os.path.join(output_dir, "config.yaml"), resolve=True)
        except OSError as e:
            raise ConfigError("output_dir", f"cannot write {output_dir}: {e.strerror}") from None
    trainer = container["trainer"]
    return fit(
        exp,
        workers=container["workers"],
        steps=trainer["steps"],
        batch_size=trainer["batch_size"],
        lifting=container["lifting"]["name"],
        log_every=trainer["log_every"],
        eval_every=trainer["eval_every"],
        eval_batch_size=trainer["eval_batch_size"],
        seed=container["seed"],
        output_dir=output_dir,
        tensorboard=bool(container["logger"]["tensorboard"]),
        progress=bool(trainer["progress"]),
    )
