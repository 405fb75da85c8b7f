"""robust_all_reduce under vmap and shard_map against the numpy reference of the stacked
gradients; its communication (one all-gather) in bytes and on the simulated clock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo import aggregators as A
from jdo import checks
from jdo.system import Cluster, Link, clock
from tests.aggregators import reference as R

W = 8
G = R.inputs(W, outliers=2, seed=4)  # per-worker gradients: 6 honest, 2 outliers
FLAT = R.flatten(G)
TAU = 1.0
SEED = 5


def _bucket_medians(steps: int) -> list[np.ndarray]:
    """Coordinate medians of the bucket means (s = 2), the transform drawing its t-th buckets
    from ``fold_in(key(seed), t)``."""
    draw = lambda t: jax.random.permutation(jax.random.fold_in(jax.random.key(SEED), t), W)
    perms = np.asarray(jax.jit(jax.vmap(draw))(jnp.arange(steps)))
    return [np.median(R.bucketing(FLAT, 2, perm), axis=0) for perm in perms]


def _nnm_cc(steps: int) -> list[np.ndarray]:
    """NNM then 2 centered-clipping iterations, centred at the previous aggregate (0 first)."""
    mixed, center, out = R.nearest_neighbor_mixing(FLAT, 2), None, []
    for _ in range(steps):
        center = R.centered_clipping(mixed, TAU, 2, center)
        out.append(center)
    return out


# name -> (aggregator, the reference aggregate at each of 2 steps)
CASES = {
    "median": (A.coordinate_median, lambda: [np.median(FLAT, axis=0)] * 2),
    "krum": (A.aggregator("krum", f=2), lambda: [FLAT[R.krum_index(FLAT, 2)]] * 2),
    "nnm_cc": (
        A.compose(
            A.aggregator("nearest_neighbor_mixing", f=2),
            A.aggregator("centered_clipping", tau=TAU, iters=2),
        ),
        lambda: _nnm_cc(2),
    ),
    "bucketing_median": (
        A.compose(A.aggregator("bucketing", s=2), A.aggregator("coordinate_median")),
        lambda: _bucket_medians(2),
    ),
}


def _run(tx, lifting, mesh, steps=2):
    init = jax.jit(jdo.lift(tx.init, lifting, mesh=mesh))
    update = jax.jit(jdo.lift(lambda g, s: tx.update(g, s), lifting, mesh=mesh))
    state, outs = init(G), []
    for _ in range(steps):
        out, state = update(G, state)
        outs.append(out)
    return outs, state


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_worker_gets_the_reference_aggregate_of_the_stacked_gradients(case, lifting, mesh8):
    aggregator, reference = CASES[case]
    tx = jdo.transforms.robust_all_reduce(aggregator, seed=SEED)
    outs, state = _run(tx, lifting, mesh8)
    for t, (out, ref) in enumerate(zip(outs, reference(), strict=True)):
        for k, v in R.unflatten(ref, G).items():
            for i in range(W):
                np.testing.assert_allclose(
                    out[k][i], v, rtol=1e-6, atol=1e-6, err_msg=f"step {t}, {k}, worker {i}"
                )
    np.testing.assert_array_equal(state.count, np.full(W, 2))
    if case == "nnm_cc":  # the state keeps the last aggregate: the next step's center
        np.testing.assert_array_equal(state.center["w"], outs[-1]["w"])
    else:
        assert state.center == ()


def test_krum_through_a_chain_ignores_the_outliers(mesh8):
    tx = optax.chain(jdo.transforms.robust_all_reduce(A.aggregator("krum", f=2)), optax.sgd(1.0))
    (out,), _ = _run(tx, "vmap", mesh8, steps=1)
    bad = np.linalg.norm(FLAT, axis=1) > 20  # the two outliers (N(10, 3) in 17 coordinates)
    assert bad.sum() == 2 and not bad[R.krum_index(FLAT, 2)]
    chosen = R.unflatten(-FLAT[R.krum_index(FLAT, 2)], G)
    np.testing.assert_allclose(out["w"][3], chosen["w"], rtol=1e-6, atol=1e-6)


def test_it_sends_one_all_gather_of_the_update_and_the_clock_charges_it():
    one = jax.tree.map(lambda g: jnp.asarray(g[0]), G)
    tx = jdo.transforms.robust_all_reduce(A.aggregator("krum", f=2))
    sent = jdo.comm.worker_bytes(lambda g, s: tx.update(g, s), W, one, tx.init(one))
    assert sent["all-gather"] == 4 * FLAT.shape[1] and sent["all-reduce"] == 0
    cluster = Cluster(workers_per_node=W, nodes=1, intra=Link(1e-4, 1e6), inter=Link(1e-3, 1e5))
    step = clock.clocked(lambda g, s: tx.update(g, s), cluster)
    run = jax.jit(jax.vmap(step, in_axes=(None, 0, None), axis_name=jdo.WORKERS))
    _, after = run(clock.start(0.0), G, tx.init(one))
    expected = cluster.collective_time("all-gather", W * 4 * FLAT.shape[1], W)
    np.testing.assert_allclose(clock.seconds(after.comm), np.full(W, expected), rtol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_comm_all_gather_is_its_reference(lifting, mesh8):
    gathered = jax.jit(jdo.lift(jdo.comm.all_gather, lifting, mesh=mesh8))(G["w"])
    np.testing.assert_array_equal(gathered, jdo.comm.all_gather_reference(G["w"]))


def test_a_pre_aggregation_alone_is_refused():
    with pytest.raises(checks.InvalidArgument, match="must end in a rule"):
        jdo.transforms.robust_all_reduce(A.aggregator("nearest_neighbor_mixing", f=1))
    with pytest.raises(checks.WrongType):
        jdo.transforms.robust_all_reduce("krum")
