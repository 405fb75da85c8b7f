"""AdaComm, Accordion and MATCHA (jdo.transforms.adaptive): their decisions against numpy
replays of the papers' rules, their reductions to the fixed transforms bit for bit under both
liftings, MATCHA's matrices, and the runner's per-step byte count of the branch taken."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import comm
from jdo import compress as C
from jdo import topology as T
from jdo.transforms.adaptive import matcha_activations, matcha_plan, matcha_rho
from tests.conftest import compose_cfg

W = 8
TARGETS = np.random.default_rng(1).normal(size=(W, 5)).astype(np.float32)


def _sgd_runs(txs, lifting, mesh, steps, losses=None):
    """Workers minimising ||x − c_i||²/2 with ``optax.chain(sgd, tx)`` for each of ``txs``
    (one program for all); ``losses[t]``: the ``[W]`` losses handed to ``update``. Returns,
    per transform, the iterates and its states."""
    chains = [optax.chain(optax.sgd(0.1), tx) for tx in txs]
    extra = (lambda f: {"loss": f}) if losses is not None else (lambda f: {})

    def update(xs, c, states, f):
        triples = zip(chains, xs, states, strict=True)
        outs = [ch.update(x - c, s, x, **extra(f)) for ch, x, s in triples]
        return [u for u, _ in outs], [s for _, s in outs]

    init = jax.jit(jdo.lift(lambda x: [ch.init(x) for ch in chains], lifting, mesh=mesh))
    upd = jax.jit(jdo.lift(update, lifting, mesh=mesh))
    xs = [jnp.zeros((W, 5))] * len(txs)
    states, runs = init(xs[0]), [([], []) for _ in txs]
    for t in range(steps):
        f = losses[t] if losses is not None else jnp.zeros(W)
        us, states = upd(xs, TARGETS, states, f)
        xs = [x + u for x, u in zip(xs, us, strict=True)]
        for (iterates, kept), x, s in zip(runs, xs, jax.device_get(states), strict=True):
            iterates.append(np.asarray(x))
            kept.append(s[1])
    return runs


def _sgd_run(tx, lifting, mesh, steps, losses=None):
    return _sgd_runs([tx], lifting, mesh, steps, losses)[0]


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_adacomm_with_a_fixed_period_is_local_sgd_bit_for_bit(lifting, mesh8):
    txs = [
        jdo.transforms.local_sgd(4),
        jdo.transforms.adacomm(4, min_every=4, max_every=4),
        # the adaptive path (the loss all-reduced with the params), a constant loss: F_l = F_0
        jdo.transforms.adacomm(4, min_every=1, max_every=16),
    ]
    losses = np.ones((10, W), np.float32)
    (ref, _), (fixed, _), (adaptive, states) = _sgd_runs(txs, lifting, mesh8, 10, losses)
    for a, b, c in zip(ref, fixed, adaptive, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert [int(s.used[0]) for s in states] == [4] * 10


def adacomm_replay(losses, every, min_every, max_every, interval):
    """AdaComm's rule in numpy (float64): the period used at each step and whether it
    averaged. ``losses``: ``[T, W]``."""
    period, since, acc, initial, evaluated = every, 0, np.zeros(losses.shape[1]), 0.0, 0
    used, synced = [], []
    for t, loss in enumerate(np.asarray(losses, np.float64)):
        used.append(period)
        acc, since = acc + loss, since + 1
        sync = since >= period
        synced.append(sync)
        if sync:
            f = float(np.mean(acc / since))
            if t + 1 - evaluated >= interval:
                initial = f if initial <= 0 else initial
                h = np.ceil(np.sqrt(f / initial) * every)
                period, evaluated = int(np.clip(h, min_every, max_every)), t + 1
            acc, since = np.zeros_like(acc), 0
    return used, synced


def test_adacomm_periods_follow_the_papers_rule_on_a_scripted_loss():
    rng = np.random.default_rng(0)
    steps = 120
    decay = np.exp(-np.arange(steps) / 25.0)[:, None]  # falls about 120x, bumps at t = 60
    losses = (2.0 * decay * (1 + 0.2 * rng.random((steps, W)))).astype(np.float32)
    losses[60:70] *= 3.0
    intervals = (1, 10)
    txs = [jdo.transforms.adacomm(16, min_every=1, max_every=32, interval=i) for i in intervals]
    runs = _sgd_runs(txs, "vmap", None, steps, losses)
    for interval, (_, states) in zip(intervals, runs, strict=True):
        used, synced = adacomm_replay(losses, 16, 1, 32, interval)
        assert [int(s.used[0]) for s in states] == used
        assert [bool(s.traffic[0]) for s in states] == synced
        assert len(set(used)) >= 4, used  # the period did change


def _apply(txs, grads, lifting, mesh, steps):
    """``steps`` updates of each of ``txs`` (one program) on per-worker gradients ``grads[t]``
    (or fixed ``grads``); per transform, its outputs and states."""
    per_step = isinstance(grads, list)
    first = grads[0] if per_step else grads
    init = jax.jit(jdo.lift(lambda g: [tx.init(g) for tx in txs], lifting, mesh=mesh))
    update = lambda g, ss: [tx.update(g, s) for tx, s in zip(txs, ss, strict=True)]
    upd = jax.jit(jdo.lift(update, lifting, mesh=mesh))
    states, runs = init(first), [([], []) for _ in txs]
    for t in range(steps):
        pairs = upd(grads[t] if per_step else grads, states)
        states = [s for _, s in pairs]
        for (outs, kept), (out, state) in zip(runs, jax.device_get(pairs), strict=True):
            outs.append(out)
            kept.append(state)
    return runs


G = {
    "w": np.random.default_rng(0).normal(size=(W, 12, 10)).astype(np.float32),
    "b": np.random.default_rng(1).normal(size=(W, 10)).astype(np.float32),
}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_accordion_with_a_fixed_compressor_is_compressed_all_reduce_bit_for_bit(lifting, mesh8):
    low, high = C.top_k(0.3), C.top_k(0.05)
    txs = [
        jdo.transforms.compressed_all_reduce(low),
        jdo.transforms.accordion(low, C.top_k(0.3)),
        # eta = 0: every interval is critical, so the switch (a cond) always takes low
        jdo.transforms.accordion(low, high, eta=0.0, interval=1),
    ]
    (ref, _), (same, _), (pinned, _) = _apply(txs, G, lifting, mesh8, 3)
    for a, b, c in zip(ref, same, pinned, strict=True):
        for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)


def accordion_replay(norm_per_step, interval, eta):
    """Accordion's rule in numpy: the level (0 low, 1 high) used at each step, from the
    norms of the reduced updates (one coordinate: norms add)."""
    level, acc, previous, used = 0, 0.0, -1.0, []
    for t, g in enumerate(norm_per_step):
        used.append(level)
        acc += g
        if (t + 1) % interval == 0:
            norm = abs(acc)
            critical = previous <= 0 or abs(previous - norm) / previous >= eta
            level, previous, acc = (0 if critical else 1), norm, 0.0
    return used


def test_accordion_levels_follow_the_papers_rule_on_a_scripted_gradient_norm():
    """Gradients on one coordinate (dyadic values: every sum exact); ``low`` the identity,
    ``high`` top-k keeping everything (exact too, with indices: costlier on the wire)."""
    interval, steps = 4, 48
    scale = np.repeat([1.0, 0.25, 0.25, 0.25, 2.0, 2.0, 1.5, 1.5, 1.5, 0.25, 0.25, 0.25], 4)
    grads = []
    for t in range(steps):
        g = np.zeros((W, 6), np.float32)
        g[:, 0] = scale[t] * (1 + np.arange(W) / 8)  # the mean: scale · 1.4375
        grads.append(g)
    tx = jdo.transforms.accordion(C.identity(), C.top_k(1.0), interval=interval, eta=0.5)
    ((outs, states),) = _apply([tx], grads, "vmap", None, steps)
    np.testing.assert_array_equal(outs[0][0], np.mean(grads[0], 0))
    expected = accordion_replay(scale * 1.4375, interval, 0.5)
    assert [int(s.used[0]) for s in states] == expected
    assert set(expected) == {0, 1}
    # top-k(1.0) sends values and indices: the identity (low) is the cheaper one
    assert [float(s.traffic[0]) for s in states] == [float(e == 1) for e in expected]


@pytest.mark.parametrize("graph", [T.ring(8), T.torus(16)])
def test_matcha_matrices_are_symmetric_doubly_stochastic_at_every_budget(graph):
    rng = np.random.default_rng(0)
    for budget in (0.25, 0.5, 1.0):
        plan = matcha_plan(graph, budget)
        edges = {frozenset(e) for m in plan.matchings for e in m}
        assert len(edges) == sum(len(m) for m in plan.matchings)  # disjoint, cover the graph
        rows, cols = np.nonzero(graph.mixing_matrix())
        assert edges == {frozenset(e) for e in zip(rows, cols, strict=True) if e[0] != e[1]}
        for matching in plan.matchings:  # each a matching
            nodes = [v for e in matching for v in e]
            assert len(nodes) == len(set(nodes))
        m = len(plan.matchings)
        for active in [np.ones(m, bool), *(rng.random((5, m)) < budget)]:
            w = plan.matrix(active)
            np.testing.assert_allclose(w, w.T)
            np.testing.assert_allclose(w.sum(0), 1, atol=1e-12)
            np.testing.assert_allclose(w.sum(1), 1, atol=1e-12)
            assert w.min() >= -1e-12
        laps = [(np.eye(graph.n) - plan.matrix(np.eye(m)[j] > 0)) / plan.alpha for j in range(m)]
        rho = lambda a, laps=laps, plan=plan: matcha_rho(a, laps, plan.probabilities)
        assert rho(plan.alpha) <= min(rho(plan.alpha * 0.9), rho(plan.alpha * 0.5)) + 1e-12
        assert rho(plan.alpha) < 1  # the expected mixing contracts


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_matcha_mixes_with_w_of_the_shared_draws(lifting, mesh8):
    graph, budget, seed, steps = T.ring(8), 0.5, 3, 6
    plan = matcha_plan(graph, budget)
    tx = jdo.transforms.matcha(graph, budget, seed)
    xs, states = _sgd_run(tx, lifting, mesh8, steps)
    x = np.zeros((W, 5))
    for t in range(steps):
        active = np.asarray(matcha_activations(seed, t, plan.probabilities))
        x = plan.matrix(active) @ (x - 0.1 * (x - TARGETS))
        np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)
        assert int(states[t].active[0]) == active.sum()


def test_matcha_with_budget_1_sends_what_gossip_sends(mesh8):
    params = {"w": jnp.zeros((W, 40, 30)), "b": jnp.zeros((W, 30))}
    counts = []
    for tx in (jdo.transforms.matcha(T.ring(8), 1.0), jdo.transforms.gossip(T.ring(8))):
        state = jax.jit(jdo.lift(tx.init, "shard_map", mesh=mesh8))(params)
        upd = jdo.lift(lambda p, s, tx=tx: tx.update(p, s, p), "shard_map", mesh=mesh8)
        counts.append(comm.collective_bytes(upd, params, state))
    assert counts[0] == counts[1] and counts[0]["collective-permute"] == 2 * 4 * (40 * 30 + 30)
    plan = matcha_plan(T.ring(8), 1.0)
    assert all(np.asarray(matcha_activations(0, t, plan.probabilities)).all() for t in range(5))


RUN = (
    "task=logistic",
    "workers=4",
    "trainer.steps=30",
    "trainer.log_every=1",
    "trainer.eval_every=30",
    "trainer.progress=false",
    "checkpoint=none",
    "cluster=cloud",
    "cluster/compute=fixed",
)


def test_runner_counts_the_bytes_and_time_of_the_branch_each_step_took(tmp_path):
    """AdaComm in the runner: per step, ``bytes/total`` grows by the all-reduce on the steps
    that averaged and by nothing on the others, and so does the clock's communication time;
    the periods logged are a numpy replay's from the logged losses."""
    import json

    from jdo.train import run

    algorithm = ("algorithm=adacomm", "algorithm.every=6", "algorithm.max_every=6")
    summary = run(compose_cfg(*RUN, *algorithm), output_dir=str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    full, quiet = summary["bytes/step"], summary["bytes/step_quiet"]
    assert quiet == 0 and full > 0
    losses = np.array([[x["train/loss"]] for x in lines])  # F_l is linear in the workers'
    used, sent = adacomm_replay(losses, 6, 1, 6, 1)
    assert [x["train/adaptive/H"] for x in lines] == used
    assert len(set(sent)) == 2
    expected = np.cumsum([full if s else quiet for s in sent])
    assert [x["bytes/total"] for x in lines] == expected.tolist()
    times = np.diff([0.0] + [x["time/total"] for x in lines])
    comm_s = times - 0.01  # cluster/compute=fixed: 10 ms a step
    assert np.all(np.abs(comm_s[~np.asarray(sent)]) < 1e-6)
    assert np.all(comm_s[np.asarray(sent)] > 1e-5)
