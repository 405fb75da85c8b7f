"""What a run trains: the algorithm, the model, the data, and what to measure about it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jdo.algorithms import Algorithm
from jdo.data import Dataset, WorkerData


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built on the host: no device work has happened yet.

    Attributes:
      algorithm: the per-worker :class:`~jdo.algorithms.Algorithm`.
      apply: ``apply(params, x) -> model output``.
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)``; None for tasks that make
        their own data (reinforcement learning).
      params: initial params, shared by every worker.
      data: every worker's part of the training set, ``[W, n_max, ...]``; None for tasks that
        make their own data inside ``algorithm.step`` (RL: ``step`` gets ``batch=None``).
      dataset: the test set, the data kind and a known optimum; None: no test set.
      counters: step metrics that are running totals over all workers (RL's ``env_steps``):
        the runner reads them at a chunk's end instead of averaging, and logs their rate
        per second (``env_steps_per_s``).
      evaluate_worker: ``evaluate_worker(state, key) -> {name: scalar}`` for ONE worker's
        algorithm state (pure; the runner vmaps it over workers at evaluation steps and logs
        ``eval/<name>`` as the mean over workers and ``eval/<name>_min``); RL uses it for the
        return of fresh episodes.
      init_params: ``init_params(key) -> params``: the model initialised from ``key`` (pure,
        traceable); ``trainer.init=per_worker`` calls it once per worker with
        ``fold_in(key(seed), worker)``. None: every worker starts from ``params``.
    """

    algorithm: Algorithm
    apply: Callable
    loss_fn: Callable | None
    params: Any
    data: WorkerData | None
    dataset: Dataset | None
    counters: tuple[str, ...] = ()
    evaluate_worker: Callable[[Any, Any], dict] | None = None
    init_params: Callable[[Any], Any] | None = None
