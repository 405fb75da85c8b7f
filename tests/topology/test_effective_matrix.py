"""Topology.effective_matrix against a loop over the links, and which stochasticity survives."""

import numpy as np
import pytest

from jdo import checks, faults
from jdo import topology as T

W = 8


def _reference(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Link by link: keep W_ij where j's message reached i, else move it onto W_ii."""
    out = np.array(w, dtype=np.float64)
    for i in range(len(w)):
        for j in range(len(w)):
            if i != j and not mask[i, j]:
                out[i, i] += out[i, j]
                out[i, j] = 0.0
    return out


@pytest.mark.parametrize(
    "make", [lambda: T.ring(W), lambda: T.torus(W), lambda: T.symmetric_exponential(W)]
)
def test_an_undirected_graph_stays_doubly_stochastic(make):
    topo, drop = make(), faults.link_drop(0.3, seed=4)
    for t in range(30):
        mask = drop.delivered(t, W)
        eff = topo.effective_matrix(t, mask)
        np.testing.assert_allclose(eff, _reference(topo.mixing_matrix(t), mask), atol=1e-15)
        np.testing.assert_allclose(eff.sum(axis=0), 1.0, atol=1e-12)
        np.testing.assert_allclose(eff.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(eff, eff.T, atol=1e-15)
        assert (eff >= 0).all()


def test_a_directed_graph_stays_row_stochastic_only():
    topo, drop = T.exponential(W), faults.link_drop(0.3, seed=4)
    cols = []
    for t in range(10):
        mask = drop.delivered(t, W, directed=True)
        eff = topo.effective_matrix(t, mask)
        np.testing.assert_allclose(eff, _reference(topo.mixing_matrix(t), mask), atol=1e-15)
        np.testing.assert_allclose(eff.sum(axis=1), 1.0, atol=1e-12)
        cols.append(np.abs(eff.sum(axis=0) - 1).max())
    assert max(cols) > 0.1  # column sums are not kept: the mean drifts


def test_everything_delivered_is_w_and_nothing_delivered_is_the_identity():
    topo = T.ring(W)
    np.testing.assert_array_equal(topo.effective_matrix(0, np.ones((W, W), bool)), topo.matrices[0])
    np.testing.assert_allclose(topo.effective_matrix(0, np.zeros((W, W), bool)), np.eye(W))


def test_a_mask_of_the_wrong_shape_or_type_is_refused():
    for bad in (np.ones((W, W - 1), bool), np.ones((W, W))):
        with pytest.raises(checks.InvalidArgument, match="delivered"):
            T.ring(W).effective_matrix(0, bad)
