"""ClippedGossip (and plain gossip) with Byzantine neighbours and lost links against a dense
numpy loop over each worker's neighbours, under vmap and shard_map; a tiny decentralized run in
which sign-flipping neighbours wreck plain gossip and ClippedGossip stays near the optimum."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import faults
from jdo import topology as T

W, STEPS = 8, 6
RNG = np.random.default_rng(0)
X0 = {"a": RNG.normal(size=(W, 3)).astype(np.float32), "b": RNG.normal(size=(W, 2, 2))}
X0["b"] = X0["b"].astype(np.float32)


def _flat(tree) -> np.ndarray:
    """``[W, ...]`` pytree -> ``[W, D]`` (the leaves' order: a, b)."""
    return np.concatenate(
        [np.asarray(tree["a"]).reshape(W, -1), np.asarray(tree["b"]).reshape(W, -1)], 1
    )


def _forged(attack, own, honest_rows, n, f):
    rows = np.stack([own, *honest_rows]).astype(np.float64)
    mu, sd = rows.mean(0), rows.std(0)
    if attack == "sign_flip":
        return -mu
    z = faults.alie_z(n, f)
    return mu - z * sd


def reference_step(x, w, tau, delivered=None, bad=(), attack=None, clip_farthest=1):
    """One ClippedGossip step on ``x: [W, D]`` by a loop over each worker's neighbours."""
    n, out = len(x), x.copy()
    for i in range(n):
        heard = [j for j in range(n) if j != i and w[i, j] > 0]
        heard = [j for j in heard if delivered is None or delivered[i, j]]
        honest = [x[j] for j in heard if j not in bad]
        sent = {
            j: (_forged(attack, x[i], honest, n, len(bad)) if j in bad else x[j]) for j in heard
        }
        diff = {j: sent[j] - x[i] for j in heard}
        dist = {j: np.linalg.norm(diff[j]) for j in heard}
        radius = tau
        if tau is None:
            ranked = sorted(dist.values(), reverse=True)
            radius = ranked[min(clip_farthest, len(ranked) - 1)] if ranked else math.inf
        for j in heard:
            scale = 1.0 if dist[j] <= radius else radius / dist[j]
            out[i] = out[i] + w[i, j] * scale * diff[j]
    return out


def _trajectory(tx, lifting, mesh, steps=STEPS):
    """Params after each of ``steps`` zero-gradient updates: ``{leaf: [W, STEPS, ...]}``."""

    def per_worker(x):
        def body(carry, _):
            x, s = carry
            u, s = tx.update(jax.tree.map(jnp.zeros_like, x), s, x)
            x = optax.apply_updates(x, u)
            return (x, s), x

        return jax.lax.scan(body, jdo.comm.varying((x, tx.init(x))), None, length=steps)[1]

    return jax.jit(jdo.lift(per_worker, lifting, mesh=mesh))(X0)


CASES = {  # name: (topology, tau, link drop p, Byzantine workers, attack)
    "ring_tau": (T.ring(W), 0.4, None, (), None),
    "expo_adaptive_drop": (T.symmetric_exponential(W), None, 0.3, (), None),
    "ring_sign_flip_drop": (T.ring(W), 0.4, 0.3, (2,), "sign_flip"),
    "torus_alie_adaptive": (T.torus(W), None, None, (0, 5), "alie"),
}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_clipped_gossip_is_the_dense_neighbour_loop(case, lifting, mesh8):
    topo, tau, p, bad, attack = CASES[case]
    fault = [faults.link_drop(p, seed=3)] if p else []
    if bad:
        fault.append(faults.byzantine(bad, attack))
    tx = jdo.transforms.clipped_gossip(topo, tau, faults=fault or None)
    out = _trajectory(tx, lifting, mesh8)
    x = _flat(X0).astype(np.float64)
    for t in range(STEPS):
        mask = faults.link_drop(p, seed=3).delivered(t, W) if p else None
        x = reference_step(x, topo.mixing_matrix(t), tau, mask, bad, attack)
        got = _flat(jax.tree.map(lambda v, t=t: v[:, t], out))
        np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")


def test_gossip_with_byzantine_is_the_unclipped_loop(mesh8):
    topo, bad = T.ring(W), (1, 6)
    tx = jdo.transforms.gossip(topo, faults=[faults.byzantine(bad, "sign_flip")])
    out = _trajectory(tx, "shard_map", mesh8, steps=3)
    x = _flat(X0).astype(np.float64)
    for t in range(3):
        x = reference_step(x, topo.mixing_matrix(t), math.inf, None, bad, "sign_flip")
        got = _flat(jax.tree.map(lambda v, t=t: v[:, t], out))
        np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6, err_msg=f"step {t}")


def _dpsgd_distance(aggregator, steps=40):
    """D-PSGD on f_i(z) = ½‖z − b_i‖² over a ring of 8, worker 0 sign-flipping: the largest
    distance of an honest worker to the honest optimum (the mean of their b_i)."""
    b = (3.0 + 0.3 * np.random.default_rng(1).normal(size=(W, 4))).astype(np.float32)
    loss = lambda p, batch, key: (0.5 * jnp.sum(jnp.square(p["z"] - batch)), {})
    algo = jdo.algorithms.dpsgd(
        loss,
        optax.sgd(0.1),
        T.ring(W),
        faults=faults.byzantine([0], "sign_flip"),
        aggregator=aggregator,
    )

    def run(batch):
        state = algo.init({"z": jnp.zeros(4)}, jax.random.key(0))
        body = lambda s, _: (algo.step(s, batch, jax.random.key(0))[0], None)
        return jax.lax.scan(body, state, None, length=steps)[0].params["z"]

    z = np.asarray(jax.jit(jax.vmap(run, axis_name=jdo.WORKERS))(b))
    optimum = b[1:].mean(0)
    return np.linalg.norm(z[1:] - optimum, axis=1).max(), np.linalg.norm(optimum)


def test_sign_flipping_neighbour_wrecks_gossip_not_clipped_gossip():
    plain, scale = _dpsgd_distance(None)
    clipped, _ = _dpsgd_distance(jdo.transforms.ClippedGossip())  # adaptive radius
    assert plain > 0.5 * scale  # dragged most of the way towards zero
    assert clipped < 0.1 * scale and clipped < 0.2 * plain
