"""A real asynchronous parameter server on Ray: one server actor and W worker actors, each in
its own process, pulling parameters and pushing gradients without a barrier.

The architecture is the parameter server of Li et al. (OSDI 2014, "Scaling distributed machine
learning with the parameter server") with one server, run as Ray actors (Moritz et al., OSDI
2018, "Ray: a distributed framework for emerging AI applications"); ``ssp`` is the stale
synchronous parallel rule of Ho et al. (NeurIPS 2013, "More effective distributed ML via a
stale synchronous parallel parameter server").

Semantics (the same as the simulated ``jdo.asynchrony``, measured instead of simulated):

- The server holds the parameters :math:`x_v` (version :math:`v`, starting at 0), the
  optimizer's state and, for every worker :math:`i`, :math:`n_i`: how many of its gradients
  were applied.
- Worker :math:`i` pulls :math:`(x_r, r)`, computes :math:`g = \\nabla f_i(x_r; \\xi)` on a
  batch of its own shard (a jitted function; its k-th gradient's batch key is
  ``fold_in(fold_in(key(seed), i), k)``, so a restarted worker draws what the lost one would
  have) and pushes :math:`(g, r)`.
- ``async``: every gradient is applied on arrival, alone:
  :math:`(x_{v+1}, s_{v+1}) = \\mathrm{opt}(x_v, s_v, g)`; its staleness is
  :math:`\\tau = v - r` (``applied_version - 1 - read_version``).
- ``ssp`` with staleness :math:`s`: gradients are still applied on arrival, but a worker that
  has completed :math:`n` gradients is released by its pull only when every worker has
  completed at least :math:`n - s` (:math:`\\min_j n_j \\ge n - s`); until then its pull
  waits on the server. It reads the version newest at its release. The bound is on progress
  (a worker is never more than :math:`s` gradients ahead of the slowest when it starts one);
  :math:`\\tau` itself may exceed :math:`s` (Ho et al.: updates of the other workers inside the
  window are not waited for), up to :math:`(W - 1)(2s + 1)`.
- After ``steps`` applied updates every pull returns None and later gradients are dropped
  (counted).

A worker whose process dies is restarted by Ray (``max_restarts``) and its ``run`` task is
retried (``max_task_retries``): the new process rebuilds its shard from the config, pulls and
goes on; the gradient it was computing is lost. Under ``ssp`` the others wait for it within
their window. Nothing here imports Ray: :mod:`jdo.train.ray_run` wraps these classes as actors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
import optax

STALENESS_BINS = 64  # the checkpointed histogram: bins 0..62, and 63 for 63 or more
MODES = ("async", "ssp")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What every actor needs (small, so a restarted actor gets it again from Ray).

    Attributes:
      config: the resolved run config; each actor rebuilds its problem from it
        (:func:`jdo.train.builder.build_problem`), data included, instead of receiving arrays.
      workers: W.
      mode: ``"async"`` or ``"ssp"``.
      staleness: ``ssp``'s s (None for ``async``).
      steps: applied updates after which the run stops.
      batch_size: rows per gradient (None: the worker's whole shard).
      seed: the batch keys' seed.
      snapshot_every: the server keeps a copy of the parameters at every multiple of this
        version (and the last) for the driver to evaluate.
    """

    config: dict
    workers: int
    mode: str
    staleness: int | None
    steps: int
    batch_size: int | None
    seed: int
    snapshot_every: int


def _problem(spec: Spec):
    from omegaconf import OmegaConf

    from jdo.train.builder import build_problem

    return build_problem(OmegaConf.create(spec.config))


def initial_state(params, optimizer: optax.GradientTransformation, workers: int) -> dict:
    """The server's checkpointed state before any update."""
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "version": np.int32(0),
        "done": np.zeros(workers, np.int32),
        "staleness_hist": np.zeros(STALENESS_BINS, np.int32),
        "dropped": np.int32(0),
    }


def staleness_bound(workers: int, staleness: int) -> int:
    """The largest staleness τ that ``ssp(s)`` allows with W workers: while worker i computes
    one gradient (it has n done, every worker at least n − s), any other worker j can have
    its gradients n − s + 1 .. n + s + 1 applied, 2s + 1 of them."""
    return (workers - 1) * (2 * staleness + 1)


class ParameterServer:
    """The server (a Ray async actor: its methods run one at a time between ``await``\\ s, so
    an update and the counters it changes are atomic). See the module docstring."""

    def __init__(self, spec: Spec, state: dict | None = None):
        problem = _problem(spec)
        self.spec = spec
        state = state or initial_state(problem.params, problem.optimizer, spec.workers)
        optimizer = problem.optimizer

        def apply(params, opt_state, grads):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self._apply = jax.jit(apply)
        zeros = jax.tree.map(np.zeros_like, state["params"])
        jax.block_until_ready(self._apply(state["params"], state["opt_state"], zeros))  # compile
        self.params = jax.device_put(state["params"])
        self.opt_state = jax.device_put(state["opt_state"])
        self.version = int(state["version"])
        self.done = np.asarray(state["done"], np.int64).copy()
        self.hist = np.asarray(state["staleness_hist"], np.int64).copy()
        self.dropped = int(state["dropped"])
        self.events: list[tuple] = []  # since the last drain: (t, worker, read, applied, loss)
        self.releases: list[tuple] = []  # since the last drain: (worker, n, min done, version)
        self.snapshots: dict[int, Any] = {}
        self.pids: dict[int, list[int]] = {i: [] for i in range(spec.workers)}
        self.t0: float | None = None
        self._host: tuple[int, Any] | None = None  # (version, params on the host)
        self._cond: asyncio.Condition | None = None
        self._stopped = False

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # made on the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    def _finished(self) -> bool:
        return self._stopped or self.version >= self.spec.steps

    def _released(self, worker: int) -> bool:
        if self._finished():
            return True
        if self.t0 is None:  # every worker's process is up and compiled: start together
            return False
        if self.spec.mode == "async":
            return True
        return int(self.done.min()) >= int(self.done[worker]) - self.spec.staleness

    def _host_params(self):
        if self._host is None or self._host[0] != self.version:
            self._host = (self.version, jax.device_get(self.params))
        return self._host[1]

    async def hello(self, worker: int, pid: int) -> None:
        """A worker's process is ready (its gradient compiled): its pid, for tests and the
        driver's report. The first pulls wait until all W are ready, so the run's clock
        (``t`` of the events) starts when every worker can start, not at process start-up."""
        self.pids[worker].append(pid)
        if self.t0 is None and all(self.pids.values()):
            self.t0 = time.perf_counter()
            cond = self._condition()
            async with cond:
                cond.notify_all()

    async def push(self, worker: int, grads, read_version: int, loss: float) -> bool:
        """Applies one gradient computed at ``read_version``; False if the run is over."""
        if self._finished():
            self.dropped += 1
            return False
        self.params, self.opt_state = self._apply(self.params, self.opt_state, grads)
        tau = self.version - read_version
        self.version += 1
        self.done[worker] += 1
        self.hist[min(tau, STALENESS_BINS - 1)] += 1
        now = time.perf_counter() - (self.t0 or time.perf_counter())
        self.events.append((now, worker, read_version, self.version, float(loss)))
        if self.version % self.spec.snapshot_every == 0 or self.version == self.spec.steps:
            self.snapshots[self.version] = self._host_params()
        cond = self._condition()
        async with cond:
            cond.notify_all()
        return True

    async def pull(self, worker: int):
        """``(params, version, n)`` once ``worker`` may start its next gradient (``ssp``: when
        no worker is more than s behind it), n being how many of its gradients were applied;
        None when the run is over."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self._released(worker))
        if self._finished():
            return None
        n = int(self.done[worker])
        self.releases.append((worker, n, int(self.done.min()), self.version))
        return self._host_params(), self.version, n

    async def push_pull(self, worker: int, grads, read_version: int, loss: float):
        """:meth:`push` then :meth:`pull`, in one round trip."""
        await self.push(worker, grads, read_version, loss)
        return await self.pull(worker)

    async def drain(self) -> dict:
        """What happened since the last drain (events in application order), and the counters."""
        out = {
            "events": self.events,
            "releases": self.releases,
            "snapshots": self.snapshots,
            "version": self.version,
            "done": self.done.tolist(),
            "dropped": self.dropped,
            "pids": {i: list(p) for i, p in self.pids.items()},
            "t": time.perf_counter() - self.t0 if self.t0 is not None else 0.0,
        }
        self.events, self.releases, self.snapshots = [], [], {}
        return out

    async def state(self) -> dict:
        """The checkpointed state (host arrays), consistent: no update runs meanwhile."""
        return {
            "params": self._host_params(),
            "opt_state": jax.device_get(self.opt_state),
            "version": np.int32(self.version),
            "done": self.done.astype(np.int32),
            "staleness_hist": self.hist.astype(np.int32),
            "dropped": np.int32(self.dropped),
        }

    async def drain_with_state(self) -> dict:
        """:meth:`drain` and :meth:`state` at once: a checkpoint the driver has seen every
        event of (its metrics and event log are complete up to the checkpoint's version)."""
        return {**(await self.drain()), "state": await self.state()}

    async def stop(self) -> None:
        """Ends the run now: every pull returns None."""
        self._stopped = True
        cond = self._condition()
        async with cond:
            cond.notify_all()


class Worker:
    """One worker (a Ray actor in its own process): its shard of the data and a jitted
    gradient; :meth:`run` pulls, computes and pushes until the server says the run is over."""

    def __init__(self, spec: Spec, index: int, server: str):
        import ray

        problem = _problem(spec)
        # By name, not handle: a restarted actor's arguments must not live in the object store.
        self.index, self.server = index, ray.get_actor(server)
        data = problem.data
        self.shard = jax.device_put((data.x[index], data.y[index], data.count[index]))
        grad = jax.value_and_grad(problem.loss_fn, has_aux=True)
        base = jax.random.key(spec.seed)
        batch_size = spec.batch_size

        def compute(params, n, shard):
            from jdo.data import sample_batch

            key = jax.random.fold_in(jax.random.fold_in(base, index), n)
            batch_key, step_key = jax.random.split(key)
            (loss, _), g = grad(params, sample_batch(*shard, batch_key, batch_size), step_key)
            return loss, g

        self._compute = jax.jit(compute)
        jax.block_until_ready(self._compute(problem.params, np.int32(0), self.shard))  # compile
        ray.get(self.server.hello.remote(index, os.getpid()))

    def run(self) -> int:
        """Pull, compute, push until the run is over; returns how many gradients this process
        pushed."""
        import ray

        pushed = 0
        got = ray.get(self.server.pull.remote(self.index))
        while got is not None:
            params, version, n = got
            loss, grads = jax.device_get(self._compute(params, np.int32(n), self.shard))
            got = ray.get(self.server.push_pull.remote(self.index, grads, version, float(loss)))
            pushed += 1
        return pushed
