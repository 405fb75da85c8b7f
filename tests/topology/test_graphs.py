import math

import networkx as nx
import numpy as np
import pytest

from jdo import checks
from jdo import topology as T

FACTORIES = {
    "ring": T.ring,
    "torus": T.torus,
    "exponential": T.exponential,
    "symmetric_exponential": T.symmetric_exponential,
    "one_peer_exponential": T.one_peer_exponential,
    "complete": T.complete,
    "star": T.star,
    "erdos_renyi": lambda n: T.erdos_renyi(n, 0.6, seed=1),
    "ring_uniform": lambda n: T.ring(n, weights="uniform"),
    "ring_directed": lambda n: T.ring(n, directed=True),
    "star_directed": lambda n: T.star(n, directed=True),
}
SIZES = (2, 4, 8, 16)
# a torus needs n = rows x cols with rows, cols >= 2
CASES = [(name, n) for name in FACTORIES for n in SIZES if not (name == "torus" and n < 4)]


@pytest.mark.parametrize("name,n", CASES)
def test_matrices_are_stochastic_as_declared_and_schedules_reproduce_them(name, n):
    topo = FACTORIES[name](n)
    assert topo.n == n
    for t in range(topo.period):
        w = topo.mixing_matrix(t)
        assert (w >= 0).all()
        if topo.stochastic in ("doubly", "row"):
            np.testing.assert_allclose(w.sum(1), 1, atol=1e-12)
        if topo.stochastic in ("doubly", "column"):
            np.testing.assert_allclose(w.sum(0), 1, atol=1e-12)
        np.testing.assert_allclose(T.schedule_matrix(topo.schedules[t]), w, atol=1e-12)
        for perm, _ in topo.schedules[t].rounds:  # every round is a full permutation
            assert sorted(s for s, _ in perm) == sorted(d for _, d in perm) == list(range(n))
    assert topo.mixing_matrix(topo.period) is topo.mixing_matrix(0)


@pytest.mark.parametrize("n", [4, 8, 16, 32])
def test_ring_spectral_gap_closed_form(n):
    expected = 1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3
    assert T.ring(n).spectral_gap() == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(T.ring(n).mixing_matrix()[0, [n - 1, 0, 1]], 1 / 3)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_static_exponential_spectral_gap_closed_form(n):
    """Ying et al. 2021: 1 − ρ = 2 / (1 + log2 n) for n a power of two."""
    assert T.exponential(n).spectral_gap() == pytest.approx(2 / (1 + math.log2(n)), abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_one_peer_exponential_product_is_exact_averaging(n):
    topo = T.one_peer_exponential(n)
    assert topo.period == int(math.log2(n))
    assert topo.rounds_per_step == (0 if n == 2 else 1)  # n = 2: W = J, one all-reduce
    product = np.eye(n)
    for t in range(topo.period):
        product = topo.mixing_matrix(t) @ product
    np.testing.assert_allclose(product, np.full((n, n), 1 / n), atol=1e-12)
    assert topo.spectral_gap() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "topo,rounds",
    [
        (T.ring(8), 2),
        (T.ring(16), 2),
        (T.exponential(8), 3),
        (T.exponential(16), 4),
        (T.one_peer_exponential(16), 1),
        (T.complete(8), 0),
        (T.star(8), 7),
        (T.torus(16), 4),
        (T.torus(12, rows=3), 4),
    ],
    ids=repr,
)
def test_rounds_per_step(topo, rounds):
    assert topo.rounds_per_step == rounds


def test_peers():
    assert T.ring(5).peers() == [[1, 4], [0, 2], [1, 3], [2, 4], [0, 3]]
    assert T.one_peer_exponential(8).peers(1)[0] == [2]
    assert T.star(4).peers()[0] == [1, 2, 3] and T.star(4).peers()[2] == [0]


def test_metropolis_is_symmetric_doubly_and_uniform_is_only_row_on_irregular_graphs():
    w = T.star(5).mixing_matrix()
    np.testing.assert_allclose(w, w.T)
    assert T.star(5, weights="uniform").stochastic == "row"
    assert T.star(5, directed=True).stochastic == "column"


def test_from_networkx_and_from_matrix():
    topo = T.from_networkx(nx.path_graph(4))
    assert topo.peers() == [[1], [0, 2], [1, 3], [2]] and topo.stochastic == "doubly"
    directed = T.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0), (0, 2)]))
    assert directed.stochastic == "column"
    w = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert T.from_matrix(w).is_complete
    tv = T.from_matrix([np.eye(2) * 0 + [[0, 1], [1, 0]], w])
    assert tv.period == 2


@pytest.mark.parametrize(
    "make,argument,message",
    [
        (lambda: T.from_matrix([[0.5, 0.6], [0.5, 0.4]]), "w", "not row stochastic"),
        (lambda: T.from_matrix([[0.5, 0.5], [0.3, 0.7]]), "w", "not column stochastic"),
        (lambda: T.from_matrix([[1.5, -0.5], [-0.5, 1.5]]), "w", "finite and non-negative"),
        (lambda: T.from_matrix(np.eye(3)), "w", "disconnected over one period \\(3 strongly"),
        (
            lambda: T.from_matrix(np.ones((2, 3)) / 3),
            "w",
            "has shape \\(2, 3\\), expected \\(2, 2\\)",
        ),
        (lambda: T.from_matrix(np.eye(2), stochastic="both"), "stochastic", "must be one of"),
        (lambda: T.erdos_renyi(16, 0.05, seed=0), "p", "is not connected; raise p"),
        (lambda: T.erdos_renyi(16, 1.5), "p", "must be in \\(0, 1\\], got 1.5"),
        (lambda: T.ring(0), "n", "must be a positive integer, got 0"),
        (
            lambda: T.torus(12, rows=5),
            "rows",
            "must divide n=12 with rows, n/rows >= 2 \\(one of 2, 3, 4, 6\\) or be null, got 5",
        ),
        (lambda: T.torus(12, rows=1), "rows", "must divide n=12"),
        # a prime n used to give a silent 1 x 7 torus, i.e. a ring
        (
            lambda: T.torus(7),
            "n",
            "must have a factorisation rows × cols with rows, cols >= 2 "
            "\\(a composite number >= 4: 4, 6, 8, 9, 10, 12, ...\\), got 7: use ring\\(7\\)",
        ),
        (lambda: T.torus(2), "n", "must have a factorisation rows × cols"),
        (lambda: T.ring(4, weights="equal"), "weights", "must be one of"),
    ],
)
def test_factories_validate(make, argument, message):
    with pytest.raises(checks.InvalidArgument, match=message) as e:
        make()
    assert e.value.argument == argument


def test_torus_shapes():
    assert T.torus(8).name == "torus2x4" and T.torus(9).name == "torus3x3"
    assert T.torus(12, rows=4).name == "torus4x3"
    assert all(len(p) == 4 for p in T.torus(16).peers())


def test_time_varying_sequence():
    topo = T.time_varying(T.ring(4), T.complete(4))
    assert topo.period == 2 and topo.is_complete is False
    np.testing.assert_allclose(topo.mixing_matrix(3), T.complete(4).mixing_matrix())
