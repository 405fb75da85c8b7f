"""The parameter server of ``backend=ray`` (jdo/train/ray_ps.py) without Ray: its methods are
plain coroutines, driven here by three simulated workers on one asyncio loop (one slow), so the
order of arrivals is real interleaving and the checks are exact.

- Every gradient is applied on arrival, computed at the version its worker read: replaying the
  event log through optax from the initial parameters gives the server's parameters (1e-6).
- ``ssp(1)``: no worker is ever released more than 1 gradient ahead of the slowest (from the
  server's counters and from the event log); the rule binds (the fast workers waited).
- ``async``: the fast workers are not held back by the slow one.
"""

import asyncio

import jax
import numpy as np
import optax
import pytest
from omegaconf import OmegaConf

from jdo.train.builder import build_problem
from jdo.train.ray_ps import ParameterServer, Spec, staleness_bound

W, STEPS = 3, 60
DELAYS = (0.02, 0.001, 0.001)  # worker 0 is slow


def _grad(params, worker: int):
    """A pseudo-gradient that depends on the parameters read and on the worker."""
    return jax.tree.map(lambda p: 0.5 * np.asarray(p) + 0.01 * (worker + 1), params)


def _serve(make_cfg, mode: str, staleness):
    cfg = make_cfg("task=logistic", f"workers={W}", "optimizer=sgd", "optimizer.learning_rate=0.1")
    container = OmegaConf.to_container(cfg, resolve=True)
    spec = Spec(container, W, mode, staleness, STEPS, 32, 0, 20)
    server = ParameterServer(spec)
    events, releases = [], []

    async def worker(i):
        await server.hello(i, 1000 + i)
        got = await server.pull(i)
        while got is not None:
            params, version, _ = got
            await asyncio.sleep(DELAYS[i])
            got = await server.push_pull(i, _grad(params, i), version, 0.0)

    async def main():
        await asyncio.gather(*(worker(i) for i in range(W)))
        out = await server.drain()
        events.extend(out["events"])
        releases.extend(out["releases"])

    asyncio.run(main())
    return server, np.asarray([e[1:4] for e in events]), np.asarray(releases), container


def _replay(events, container):
    """The run's parameters from the event log: version v + 1 = the optimizer applied to
    version v with the gradient computed at the event's read version."""
    problem = build_problem(OmegaConf.create(container))
    opt = optax.sgd(0.1)
    versions, state = [problem.params], opt.init(problem.params)
    for worker, read, applied in events:
        assert applied == len(versions)
        g = _grad(versions[read], int(worker))
        updates, state = opt.update(g, state, versions[-1])
        versions.append(optax.apply_updates(versions[-1], updates))
    return versions[-1]


def _leads_from_events(events):
    """How far ahead of the slowest each worker was when it read, from the log alone."""
    out = []
    for worker, read, applied in events:
        done = np.bincount(events[events[:, 2] <= read, 0], minlength=W)
        mine = np.sum((events[:, 0] == worker) & (events[:, 2] < applied))
        out.append(mine - done.min())
    return np.asarray(out)


@pytest.mark.parametrize("mode,s", [("async", None), ("ssp", 1)])
def test_server_applies_on_arrival_and_enforces_ssp(make_cfg, mode, s):
    server, events, releases, container = _serve(make_cfg, mode, s)
    assert np.array_equal(events[:, 2], np.arange(1, STEPS + 1))
    replayed = _replay(events, container)
    for a, b in zip(jax.tree.leaves(server.params), jax.tree.leaves(replayed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    taus = events[:, 2] - 1 - events[:, 1]
    assert np.array_equal(server.hist[: taus.max() + 1], np.bincount(taus))
    done = np.bincount(events[:, 0], minlength=W)
    assert np.array_equal(server.done, done)
    leads = _leads_from_events(events)
    if mode == "ssp":
        assert np.max(releases[:, 1] - releases[:, 2]) == s  # binding, never exceeded
        assert leads.max() <= s and taus.max() <= staleness_bound(W, s)
        assert done.max() - done.min() <= s + 1
    else:
        assert done[1] > done[0] + 3 and done[2] > done[0] + 3  # not held back
        assert leads.max() > 1
