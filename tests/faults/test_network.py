"""Fault masks: the documented draw rule (numpy on the raw random bits), host-side views equal
to the traced ones under vmap and shard_map, crash windows, and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo import checks, faults
from jdo import topology as T

W, STEPS = 8, 12


def _bits(seed: int, step: int) -> np.ndarray:
    """``[W, W]`` uint32: row i is ``random.bits(fold_in(fold_in(key(seed), i), step), [W])``."""
    draw = lambda i: jax.random.bits(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), step), (W,), jnp.uint32
    )
    return np.stack([np.asarray(draw(i)) for i in range(W)])


def _reference_mask(p: float, seed: int, step: int, directed: bool) -> np.ndarray:
    """The docstring's rule in numpy: j's message to i is lost when bits[i, j] < p·2^32; an
    undirected edge {i < j} uses bits[i, j] for both directions."""
    kept = _bits(seed, step).astype(np.uint64) >= np.uint64(round(p * 2**32))
    if not directed:
        upper = np.triu(kept, 1)
        kept = upper | upper.T
    return kept | np.eye(W, dtype=bool)


@pytest.mark.parametrize("directed", [False, True])
def test_link_drop_follows_its_documented_draw(directed):
    drop = faults.link_drop(0.3, seed=7)
    for t in range(4):
        mask = drop.delivered(t, W, directed=directed)
        assert mask.dtype == bool and mask.shape == (W, W)
        np.testing.assert_array_equal(mask, _reference_mask(0.3, 7, t, directed))
        assert np.diag(mask).all()
        if not directed:
            np.testing.assert_array_equal(mask, mask.T)


def test_link_drop_loses_a_fraction_p_of_the_links():
    drop = faults.link_drop(0.3, seed=1)
    edges = [drop.delivered(t, W)[np.triu_indices(W, 1)] for t in range(60)]
    lost = 1 - np.mean(edges)  # 60 · 28 = 1680 edges: standard error 0.011
    assert abs(lost - 0.3) < 0.045, lost
    directed = [drop.delivered(t, W, directed=True) for t in range(10)]
    assert any(not np.array_equal(m, m.T) for m in directed)
    assert faults.link_drop(0.0).delivered(3, W).all()
    np.testing.assert_array_equal(faults.link_drop(1.0).delivered(3, W), np.eye(W, dtype=bool))


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_host_and_traced_masks_are_identical(lifting, mesh8):
    model = faults.combine(faults.link_drop(0.4, seed=2), faults.node_crash([1, 6], 3, 8))

    def per_worker(step):  # what a transform computes inside its step: its own row
        me = jdo.comm.worker_index()
        return model.delivered_traced(step, W)[me], model.alive_traced(step, W)

    f = jax.jit(jdo.lift(per_worker, lifting, mesh=mesh8))
    for t in range(STEPS):
        rows, alive = f(jnp.full((W,), t, jnp.int32))
        np.testing.assert_array_equal(np.asarray(rows), model.delivered(t, W))
        np.testing.assert_array_equal(np.asarray(alive)[0], model.alive(t, W))


def test_node_crash_window_and_its_masks():
    crash = faults.node_crash([5, 2], at_step=3, rejoin_step=6)
    for t in range(9):
        down = 3 <= t < 6
        expected = ~(np.isin(np.arange(W), [2, 5]) & down)
        np.testing.assert_array_equal(crash.alive(t, W), expected)
        ref = (expected[:, None] & expected[None, :]) | np.eye(W, dtype=bool)
        np.testing.assert_array_equal(crash.delivered(t, W), ref)
    forever = faults.node_crash([0], at_step=2)
    assert not forever.alive(10**6, W)[0] and forever.alive(1, W)[0]
    assert crash.rejoins and not forever.rejoins


def test_rejoining_marks_the_first_step_back():
    crash = faults.node_crash([4], at_step=2, rejoin_step=5)
    back = jax.jit(lambda t, since: faults.rejoining(crash, t, W, since), static_argnums=1)
    for t in range(8):
        np.testing.assert_array_equal(np.asarray(back(t, 1)), (np.arange(W) == 4) & (t == 5))
    # every=3: back at the first mixing (t = 6) after being down since the last one (t = 3)
    assert bool(back(6, 3)[4]) and not bool(back(3, 3)[4]) and not bool(back(9, 3)[4])


def test_bad_fault_arguments_name_the_argument():
    cases = [
        (lambda: faults.link_drop(1.5), "p"),
        (lambda: faults.node_crash([], 3), "workers"),
        (lambda: faults.node_crash([1], -1), "at_step"),
        (lambda: faults.node_crash([1], 4, rejoin_step=4), "rejoin_step"),
        (lambda: faults.node_crash([9], 0).alive(0, W), "workers"),
        (lambda: jdo.transforms.gossip(T.ring(W), faults=faults.node_crash([8], 0)), "workers"),
        (lambda: jdo.transforms.all_reduce(faults="drop"), "faults"),
    ]
    for make, argument in cases:
        with pytest.raises(checks.ArgumentError) as err:
            make()
        assert err.value.argument == argument, err.value


def test_is_directed_reads_the_support():
    assert not faults.is_directed(T.ring(W)) and not faults.is_directed(T.complete(W))
    assert faults.is_directed(T.exponential(W)) and faults.is_directed(T.ring(W, directed=True))
    assert faults.is_directed(T.one_peer_exponential(W))
