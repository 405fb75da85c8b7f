"""Transforms under faults against numpy recursions built from the host-side masks, under vmap
and shard_map: gossip with lost links is x ← W_eff(t) x; all-reduce averages what arrived;
crashed workers neither move nor are read (a NaN planted in them reaches nobody) and rejoin
with the average; robust all-reduce sees the Byzantine rows forged; a lost message does not
delay the simulated clock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import aggregators as A
from jdo import faults
from jdo import topology as T
from jdo.system import Cluster, Link, clock, slow_worker
from tests.aggregators import reference as R

W, D, LR = 8, 3, 0.1
RNG = np.random.default_rng(0)
X0 = RNG.normal(size=(W, D)).astype(np.float32)


def _run(tx, grads, lifting, mesh, x0=X0):
    """Params after each step, ``[W, STEPS, D]``: ``x ← x + update(g_t)`` in one jitted scan."""

    def per_worker(x, g):
        def body(carry, gt):
            x, s = carry
            u, s = tx.update(gt, s, x)
            x = optax.apply_updates(x, u)
            return (x, s), x

        _, xs = jax.lax.scan(body, jdo.comm.varying((x, tx.init(x))), g)
        return xs

    return np.asarray(jax.jit(jdo.lift(per_worker, lifting, mesh=mesh))(x0, grads))


TOPOLOGIES = {"ring": T.ring, "exponential": T.exponential, "complete": T.complete}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_gossip_with_link_drop_is_the_effective_matrix_recursion(name, lifting, mesh8):
    topo, drop, steps = TOPOLOGIES[name](W), faults.link_drop(0.3, seed=1), 30
    out = _run(jdo.transforms.gossip(topo, faults=drop), np.zeros((W, steps, D)), lifting, mesh8)
    directed = faults.is_directed(topo)
    x = X0.astype(np.float64)
    for t in range(steps):
        eff = topo.effective_matrix(t, drop.delivered(t, W, directed=directed))
        np.testing.assert_allclose(eff.sum(axis=1), 1.0, atol=1e-12)
        if not directed:  # an undirected graph keeps the worker mean at every step
            np.testing.assert_allclose(eff.sum(axis=0), 1.0, atol=1e-12)
        x = eff @ x
        np.testing.assert_allclose(out[:, t], x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")
    if not directed:
        np.testing.assert_allclose(out[:, -1].mean(0), X0.mean(0), atol=1e-6)
    assert np.ptp(out[:, -1], axis=0).max() < 0.2 * np.ptp(X0, axis=0).max()  # still mixing


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_all_reduce_with_link_drop_is_the_mean_over_what_arrived(lifting, mesh8):
    drop, steps = faults.link_drop(0.3, seed=2), 6
    grads = RNG.normal(size=(W, steps, D)).astype(np.float32)
    out = _run(jdo.transforms.all_reduce(faults=drop), grads, lifting, mesh8)
    x = X0.astype(np.float64)
    for t in range(steps):
        mask = drop.delivered(t, W)
        np.testing.assert_array_equal(mask, mask.T)
        x = x + np.stack([grads[mask[i], t].mean(axis=0) for i in range(W)])
        np.testing.assert_allclose(out[:, t], x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")


def test_masked_all_reduce_sends_one_all_gather():
    tx = jdo.transforms.all_reduce(faults=faults.link_drop(0.1))
    one = jnp.zeros((D,), jnp.float32)
    sent = jdo.comm.worker_bytes(lambda g, s: tx.update(g, s), W, one, tx.init(one))
    assert sent["all-gather"] == 4 * D and sent["all-reduce"] == 0


def _planted(grads: np.ndarray, crash) -> np.ndarray:
    """``grads`` with NaN wherever the worker is down: nobody may read what a down worker has."""
    out = grads.copy()
    for t in range(grads.shape[1]):
        out[~crash.alive(t, W), t] = np.nan
    return out


def _back(crash, t: int) -> np.ndarray:
    return crash.alive(t, W) & ~(crash.alive(t - 1, W) if t else np.ones(W, bool))


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_gossip_crashed_worker_is_frozen_unread_and_rejoins_with_its_neighbours(lifting, mesh8):
    topo, crash, steps = T.ring(W), faults.node_crash([2], at_step=4, rejoin_step=9), 12
    grads = RNG.normal(size=(W, steps, D)).astype(np.float32)
    tx = optax.chain(optax.sgd(LR), jdo.transforms.gossip(topo, faults=crash))
    out = _run(tx, _planted(grads, crash), lifting, mesh8)
    assert np.isfinite(out).all()
    w, x = topo.mixing_matrix(0), X0.astype(np.float64)
    for t in range(steps):
        up, back, mask = crash.alive(t, W), _back(crash, t), crash.delivered(t, W)
        local = x - LR * grads[:, t]
        new = topo.effective_matrix(t, mask) @ np.where(up[:, None], local, 0.0)
        for i in np.flatnonzero(back):  # the weighted mean of the neighbours that reached it
            nb = [j for j in range(W) if j != i and mask[i, j] and w[i, j] > 0]
            new[i] = sum(w[i, j] * local[j] for j in nb) / sum(w[i, j] for j in nb)
        x = np.where(up[:, None], new, x)
        np.testing.assert_allclose(out[:, t], x, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")
    np.testing.assert_array_equal(out[2, 4:9], np.broadcast_to(out[2, 3], (5, D)))  # frozen
    assert not np.allclose(out[2, 9], out[2, 8])  # and it moved on rejoin


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_all_reduce_crashed_workers_are_frozen_unread_and_rejoin_with_the_average(lifting, mesh8):
    crash, steps = faults.node_crash([2, 5], at_step=2, rejoin_step=5), 7
    grads = RNG.normal(size=(W, steps, D)).astype(np.float32)
    tx = optax.chain(optax.sgd(LR), jdo.transforms.all_reduce(faults=crash))
    out = _run(tx, _planted(grads, crash), lifting, mesh8)
    assert np.isfinite(out).all()
    x = X0.astype(np.float64)
    for t in range(steps):
        up, back = crash.alive(t, W), _back(crash, t)
        step = -LR * grads[up, t].mean(axis=0)
        stayers = up & ~back
        new = np.where(back[:, None], x[stayers].mean(axis=0), x) + step
        x = np.where(up[:, None], new, x)
        np.testing.assert_allclose(out[:, t], x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")
    stayers = crash.alive(5, W) & crash.alive(4, W)
    rejoined = out[stayers, 4].mean(axis=0) - LR * grads[:, 5].mean(axis=0)
    for b in (2, 5):
        np.testing.assert_array_equal(out[b, 2:5], np.broadcast_to(out[b, 1], (3, D)))  # frozen
        np.testing.assert_allclose(out[b, 5], rejoined, rtol=1e-6, atol=1e-6)  # the average


def test_all_reduce_rejoin_needs_params():
    tx = jdo.transforms.all_reduce(faults=faults.node_crash([1], 0, 2))
    with pytest.raises(jdo.checks.InvalidArgument, match="params"):
        jax.vmap(lambda g: tx.update(g, tx.init(g)), axis_name=jdo.WORKERS)(jnp.zeros((W, D)))


G = R.inputs(W, outliers=0, seed=4)  # honest per-worker gradients
FLAT = R.flatten(G)
BAD = np.isin(np.arange(W), [1, 4])


def _alie(flat):
    h = flat[~BAD]
    return h.mean(axis=0) - faults.alie_z(W, 2) * h.std(axis=0)


ATTACKED = {  # name -> (attack, aggregator, numpy aggregate of the forged rows)
    "sign_flip_median": ("sign_flip", A.coordinate_median, lambda f: np.median(f, axis=0)),
    "sign_flip_mean": ("sign_flip", A.mean, lambda f: f.mean(axis=0)),
    "alie_krum": (faults.alie(), A.aggregator("krum", f=2), lambda f: f[R.krum_index(f, 2)]),
    "alie_median": (faults.alie(), A.coordinate_median, lambda f: np.median(f, axis=0)),
}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("case", sorted(ATTACKED))
def test_robust_all_reduce_aggregates_the_forged_rows(case, lifting, mesh8):
    attack, aggregator, reference = ATTACKED[case]
    model = faults.byzantine(np.flatnonzero(BAD).tolist(), attack)
    tx = jdo.transforms.robust_all_reduce(aggregator, faults=model)
    update = jax.jit(jdo.lift(lambda g, s: tx.update(g, s)[0], lifting, mesh=mesh8))
    out = update(G, jdo.lift(tx.init, "vmap")(G))
    forged = FLAT.copy()
    forged[BAD] = -FLAT[~BAD].mean(axis=0) if "sign_flip" in case else _alie(FLAT)
    for k, v in R.unflatten(reference(forged), G).items():
        for i in range(W):
            np.testing.assert_allclose(out[k][i], v, rtol=1e-5, atol=1e-6, err_msg=f"{k} {i}")


def test_a_lost_message_does_not_delay_its_receiver():
    """Worker 0 is 10x slower; down from step 0, its ring neighbours 1 and 7 do not wait."""
    cluster = Cluster(
        workers_per_node=W,
        nodes=1,
        intra=Link(1e-4, 1e6),
        inter=Link(1e-3, 1e5),
        stragglers=slow_worker([0], 10.0),
    )
    one = jnp.zeros((D,), jnp.float32)
    ends = {}
    for name, fault in (("none", None), ("crash", faults.node_crash([0], 0))):
        tx = jdo.transforms.gossip(T.ring(W), faults=fault)
        step = clock.clocked(lambda u, s, p, tx=tx: tx.update(u, s, p)[0], cluster)
        run = jax.jit(jax.vmap(step, in_axes=(None, 0, None, 0), axis_name=jdo.WORKERS))
        _, after = run(clock.start(0.01), jnp.zeros((W, D)), tx.init(one), jnp.asarray(X0))
        ends[name] = clock.seconds(after.now)
    message = cluster.message_time(2, 1, 4 * D)
    assert ends["none"][1] > 0.1  # waits for worker 0's 0.1 s step
    np.testing.assert_allclose(ends["crash"][[1, 7]], 0.01 + message, rtol=1e-6)


def test_periodic_gossip_uses_the_mask_of_its_own_update_count(mesh8):
    topo, drop, steps = T.ring(W), faults.link_drop(0.5, seed=3), 8
    tx = jdo.transforms.gossip(topo, every=2, faults=drop)
    out = _run(tx, np.zeros((W, steps, D)), "vmap", mesh8)
    x = X0.astype(np.float64)
    for t in range(steps):
        if t % 2 == 0:  # the t-th update mixes with delivered(t), W(t // every)
            x = topo.effective_matrix(t // 2, drop.delivered(t, W)) @ x
        np.testing.assert_allclose(out[:, t], x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")


def test_all_reduce_under_combined_link_drop_and_crash(mesh8):
    model = [faults.link_drop(0.3, seed=5), faults.node_crash([6], at_step=1)]
    combined, steps = faults.combine(*model), 4
    grads = RNG.normal(size=(W, steps, D)).astype(np.float32)
    out = _run(jdo.transforms.all_reduce(faults=model), grads, "shard_map", mesh8)
    x = X0.astype(np.float64)
    for t in range(steps):
        mask, up = combined.delivered(t, W), combined.alive(t, W)
        step = np.stack([grads[mask[i], t].mean(axis=0) for i in range(W)])
        x = np.where(up[:, None], x + step, x)
        np.testing.assert_allclose(out[:, t], x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")
