"""Communication graphs as mixing matrices, validated on the host.

A :class:`Topology` holds ``W(t)`` for one period (``W(t) = matrices[t mod T]``) as numpy
arrays, and the static ppermute schedule of each. Row i of ``W`` is what worker i keeps of each
worker's value: ``mix(x)_i = Σ_j W_ij x_j``. Every factory checks its result: non-negative,
stochastic as declared, and connected over one period.

Weights: ``"metropolis"`` (Metropolis–Hastings, ``W_ij = 1/(1 + max(d_i, d_j))``, symmetric and
doubly stochastic on any undirected graph; the default) or ``"uniform"`` (``1/(d_i + 1)``,
doubly stochastic on regular graphs, only row stochastic otherwise). ``directed=True`` gives a
column-stochastic matrix in which each sender splits its value equally over itself and its
out-neighbours (``A_ij = 1/(d_j^out + 1)``), as push-sum needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from jdo import checks
from jdo.topology.schedule import Schedule, make_schedule

if TYPE_CHECKING:
    import networkx as nx  # imported where a graph is built: `import jdo.transforms` stays light

STOCHASTIC = ("doubly", "row", "column")
WEIGHTS = ("metropolis", "uniform")
_TOL = 1e-10


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """A (possibly time-varying) mixing matrix over ``n`` workers.

    Attributes:
      name: for logs and tables.
      matrices: ``W(0), ..., W(T-1)``, each ``[n, n]`` float64; ``W(t) = matrices[t mod T]``.
      stochastic: ``"doubly"`` (rows and columns sum to 1: mixing keeps the worker mean),
        ``"row"`` (rows sum to 1) or ``"column"`` (columns sum to 1: push-sum).
    """

    name: str
    matrices: tuple[np.ndarray, ...]
    stochastic: str = "doubly"

    def __post_init__(self):
        _validate(self.name, self.matrices, self.stochastic)
        for m in self.matrices:
            m.setflags(write=False)

    @property
    def n(self) -> int:
        return self.matrices[0].shape[0]

    @property
    def period(self) -> int:
        return len(self.matrices)

    @property
    def is_complete(self) -> bool:
        """Every W(t) is the averaging matrix: mixing is one all-reduce mean."""
        return all(np.allclose(m, 1.0 / self.n, atol=_TOL) for m in self.matrices)

    def mixing_matrix(self, step: int = 0) -> np.ndarray:
        """``W(step)`` as a read-only numpy array."""
        return self.matrices[step % self.period]

    def effective_matrix(self, step: int, delivered, lost_to: str = "receiver") -> np.ndarray:
        """The mixing matrix actually applied at ``step`` when only the ``delivered`` links
        work (``[n, n]`` bool, entry ``[i, j]``: j's message reached i; e.g.
        ``jdo.faults.link_drop(p).delivered(step, n)``): ``W(step)_ij`` on delivered links, 0 on
        lost ones, and each lost weight added to the receiver's own weight ``W_ii``.

        Every row keeps its sum, so a row-stochastic W stays row stochastic. A symmetric W
        (Metropolis weights on an undirected graph) with a symmetric mask (an edge lost in both
        directions) stays symmetric, hence doubly stochastic: mixing keeps the worker mean. A
        column-stochastic (push-sum) W does not stay column stochastic: what a lost message
        carried is replaced by the receiver's own value, so push-sum's weights no longer sum to
        W and its ratio tends to a perturbed average; a directed doubly stochastic W (the
        exponential graph) stays row stochastic only (consensus, not the exact mean).

        ``lost_to="sender"`` (push-sum under lost links): each lost weight goes to the
        *sender's* own weight ``W_jj`` instead, so every column keeps its sum (a
        column-stochastic W stays column stochastic: ``Σ_i x_i`` is conserved) and rows do
        not."""
        checks.one_of("lost_to", lost_to, ("receiver", "sender"))
        w = self.mixing_matrix(step)
        mask = np.asarray(delivered)
        if mask.shape != w.shape or mask.dtype != bool:
            raise checks.InvalidArgument(
                "delivered",
                f"must be a bool array of shape {w.shape}, got {mask.dtype} {mask.shape}",
            )
        mask = mask | np.eye(self.n, dtype=bool)
        out = np.where(mask, w, 0.0)
        out[np.diag_indices(self.n)] += np.where(mask, 0.0, w).sum(
            axis=1 if lost_to == "receiver" else 0
        )
        return out

    def peers(self, step: int = 0) -> list[list[int]]:
        """For each worker, the workers it receives from at ``step`` (self excluded)."""
        w = self.mixing_matrix(step)
        return [[int(j) for j in np.flatnonzero(w[i]) if j != i] for i in range(self.n)]

    @cached_property
    def schedules(self) -> tuple[Schedule, ...]:
        """One static ppermute schedule per step of the period."""
        return tuple(make_schedule(m) for m in self.matrices)

    @property
    def rounds_per_step(self) -> int:
        """ppermutes per mixing step (the largest over the period; 0 for the complete graph,
        which mixes with one all-reduce)."""
        return 0 if self.is_complete else max(len(s.rounds) for s in self.schedules)

    def spectral_gap(self, step: int | None = None) -> float:
        """``1 − ρ``: how much one mixing step contracts the disagreement between workers.

        For a doubly stochastic ``W``, ``ρ = ||W − J||_2`` (J the averaging matrix), which is
        ``|λ_2|`` for symmetric W. For other matrices, ``ρ = |λ_2(W)|``, the second largest
        eigenvalue modulus. With ``step=None`` a time-varying topology reports the per-step
        rate over one period, ``1 − ||W(T−1)…W(0) − J||_2^(1/T)``.
        """
        if step is not None or self.period == 1:
            return 1.0 - _contraction(self.mixing_matrix(step or 0), self.stochastic)
        product = np.eye(self.n)
        for m in self.matrices:
            product = m @ product
        return 1.0 - _contraction(product, self.stochastic) ** (1.0 / self.period)

    def __repr__(self) -> str:
        period = f", period={self.period}" if self.period > 1 else ""
        return f"Topology({self.name}, n={self.n}{period}, {self.stochastic})"


def _contraction(w: np.ndarray, stochastic: str) -> float:
    n = w.shape[0]
    if n == 1:
        return 0.0
    if stochastic == "doubly":
        return float(np.linalg.norm(w - np.full((n, n), 1.0 / n), 2))
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(moduli[1])


def _validate(
    name: str, matrices: Sequence[np.ndarray], stochastic: str, argument: str = "matrices"
) -> None:
    """Checks the matrices of topology ``name``; errors name ``argument`` (the parameter that
    holds them)."""
    checks.one_of("stochastic", stochastic, STOCHASTIC)
    if not len(matrices):
        raise checks.InvalidArgument(argument, f"({name}) needs at least one mixing matrix")
    n = matrices[0].shape[0] if matrices[0].ndim else 0

    def bad(t, what):
        return checks.InvalidArgument(argument, f"({name}): W({t}) {what}")

    union = np.zeros((n, n), bool)
    for t, w in enumerate(matrices):
        if w.ndim != 2 or w.shape != (n, n):
            raise bad(t, f"has shape {w.shape}, expected ({n}, {n})")
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise bad(t, "must be finite and non-negative")
        rows, cols = np.abs(w.sum(1) - 1).max(), np.abs(w.sum(0) - 1).max()
        if stochastic in ("doubly", "row") and rows > 1e-8:
            raise bad(t, f"is not row stochastic (a row sums to 1 ± {rows:.2g})")
        if stochastic in ("doubly", "column") and cols > 1e-8:
            raise bad(t, f"is not column stochastic (a column sums to 1 ± {cols:.2g})")
        union |= w > 0
    import networkx as nx

    graph = nx.from_numpy_array(union.astype(int), create_using=nx.DiGraph)
    if n > 1 and not nx.is_strongly_connected(graph):
        parts = nx.number_strongly_connected_components(graph)
        raise checks.InvalidArgument(
            argument,
            f"({name}): the graph is disconnected over one period ({parts} strongly connected "
            "parts): the workers could never agree",
        )


def check_topology(
    name: str, value, stochastic: Sequence[str] = STOCHASTIC, *, purpose: str = ""
) -> Topology:
    """``value`` as a :class:`Topology` whose mixing is one of ``stochastic`` (a factory's
    argument check; ``purpose`` names who needs it in the message)."""
    if not isinstance(value, Topology):
        raise checks.WrongType(
            name,
            f"must be a jdo.topology.Topology (ring(n), exponential(n), ...), got "
            f"{type(value).__name__}",
        )
    if value.stochastic not in stochastic:
        who = f" for {purpose}" if purpose else ""
        raise checks.InvalidArgument(
            name,
            f"must be {' or '.join(stochastic)} stochastic{who}; {value!r} is "
            f"{value.stochastic} stochastic",
        )
    return value


# ----------------------------------------------------------------------------------------------
# Weights from graphs
# ----------------------------------------------------------------------------------------------


def _weighted(adj: np.ndarray, weights: str, directed: bool) -> tuple[np.ndarray, str]:
    """Mixing matrix from a 0/1 adjacency (``adj[i, j] = 1``: j sends to i; no self loops)."""
    adj = (np.asarray(adj) > 0).astype(np.float64)
    np.fill_diagonal(adj, 0.0)
    n = adj.shape[0]
    if directed:
        a = adj + np.eye(n)
        w = a / a.sum(axis=0, keepdims=True)
        doubly = np.allclose(w.sum(axis=1), 1.0, atol=_TOL)  # e.g. a directed ring
        return w, "doubly" if doubly else "column"
    checks.one_of("weights", weights, WEIGHTS)
    if not np.array_equal(adj, adj.T):
        raise checks.InvalidArgument(
            "directed",
            "must be true for a non-symmetric adjacency (an undirected topology "
            "needs a symmetric one)",
        )
    deg = adj.sum(axis=1)
    if weights == "uniform":
        w = (adj + np.eye(n)) / (deg[:, None] + 1)
        regular = np.allclose(deg, deg[0])
        return w, "doubly" if regular else "row"
    w = adj / (1.0 + np.maximum(deg[:, None], deg[None, :]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w, "doubly"


def _check_n(n: int, minimum: int = 1) -> int:
    return checks.integer("n", n, minimum=minimum)


def _circulant_adj(n: int, shifts) -> np.ndarray:
    """``adj[i, j] = 1`` when j = i + s (mod n) for some shift s: i receives from i + s."""
    adj = np.zeros((n, n))
    for i in range(n):
        for s in shifts:
            if (i + s) % n != i:
                adj[i, (i + s) % n] = 1.0
    return adj


def _from_adj(name, adj, weights="metropolis", directed=False) -> Topology:
    w, stochastic = _weighted(adj, weights, directed)
    return Topology(name, (w,), stochastic)


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------


def ring(n: int, weights: str = "metropolis", directed: bool = False) -> Topology:
    """Cycle: each worker mixes with its two neighbours (1/3 each with the default weights);
    ``directed=True``: each sends to the next only (column and row stochastic, 1/2 each)."""
    n = _check_n(n)
    adj = _circulant_adj(n, [1] if directed else [1, -1])
    return _from_adj(
        f"ring{'-directed' if directed else ''}", adj.T if directed else adj, weights, directed
    )


def torus(n: int, rows: int | None = None, weights: str = "metropolis") -> Topology:
    """2-D torus (wrap-around grid) of ``rows × cols = n`` workers, each with 4 neighbours
    (fewer when a side is 2); ``rows`` defaults to the most square factorisation of n.

    Both sides must be at least 2, so n must be composite and at least 4 (4, 6, 8, 9, 10,
    12, ...): a prime n (or ``rows`` of 1 or n) would be a ring, which ``ring(n)`` builds."""
    n = _check_n(n)
    shapes = [r for r in range(2, math.isqrt(n) + 1) if n % r == 0]
    if not shapes:
        raise checks.InvalidArgument(
            "n",
            f"must have a factorisation rows × cols with rows, cols >= 2 (a composite "
            f"number >= 4: 4, 6, 8, 9, 10, 12, ...), got {n}: use ring({n}) for a cycle",
        )
    if rows is None:
        rows = shapes[-1]
    checks.integer("rows", rows)
    if not 2 <= rows <= n // 2 or n % rows:
        allowed = sorted({*shapes, *(n // r for r in shapes)})
        raise checks.InvalidArgument(
            "rows",
            f"must divide n={n} with rows, n/rows >= 2 (one of "
            f"{', '.join(map(str, allowed))}) or be null, got {rows}",
        )
    cols = n // rows
    adj = np.zeros((n, n))
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                j = ((r + dr) % rows) * cols + (c + dc) % cols
                if j != i:
                    adj[i, j] = 1.0
    return _from_adj(f"torus{rows}x{cols}", adj, weights)


def exponential(n: int) -> Topology:
    """Static exponential-2 graph (BlueFog's ExponentialTwoGraph; Ying et al. 2021): worker i
    receives from i + 2^k (mod n), k = 0..⌈log2 n⌉−1, uniform weights 1/(⌈log2 n⌉ + 1).
    Directed but doubly stochastic; spectral gap 2/(1 + log2 n) for n a power of two."""
    n = _check_n(n)
    tau = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    shifts = sorted({2**k % n for k in range(tau)} - {0})
    w = np.eye(n)
    if shifts:
        w = (np.eye(n) + _circulant_adj(n, shifts)) / (len(shifts) + 1)
    return Topology("exponential", (w,), "doubly")


def symmetric_exponential(n: int, weights: str = "metropolis") -> Topology:
    """Undirected exponential graph: i ↔ i ± 2^k (mod n), k = 0..⌈log2 n⌉−1."""
    n = _check_n(n)
    tau = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    shifts = [s * 2**k for k in range(tau) for s in (1, -1)]
    return _from_adj("symmetric_exponential", _circulant_adj(n, shifts), weights)


def one_peer_exponential(n: int) -> Topology:
    """Time-varying one-peer exponential graph (Ying et al. 2021): at step t worker i averages
    with worker i + 2^(t mod τ), τ = ⌈log2 n⌉: ``W(t) = (I + S^(2^t))/2``, one ppermute per
    step. For n a power of two, τ consecutive steps give exact averaging."""
    n = _check_n(n)
    if n == 1:
        return Topology("one_peer_exponential", (np.eye(1),))
    tau = max(1, math.ceil(math.log2(n)))
    mats = tuple((np.eye(n) + _circulant_adj(n, [2**t % n])) / 2 for t in range(tau))
    return Topology("one_peer_exponential", mats, "doubly")


def complete(n: int) -> Topology:
    """Every worker averages with every other: ``W = J``; mixing is one all-reduce mean."""
    n = _check_n(n)
    return Topology("complete", (np.full((n, n), 1.0 / n),), "doubly")


def star(n: int, weights: str = "metropolis", directed: bool = False) -> Topology:
    """Worker 0 is the hub, connected to every other worker."""
    n = _check_n(n)
    adj = np.zeros((n, n))
    adj[0, 1:] = adj[1:, 0] = 1.0
    return _from_adj("star", adj, weights, directed)


def erdos_renyi(
    n: int, p: float, seed: int = 0, weights: str = "metropolis", directed: bool = False
) -> Topology:
    """Random G(n, p) graph (networkx, fixed seed); an error if it is not connected."""
    import networkx as nx

    n = _check_n(n)
    checks.probability("p", p, allow_zero=False)
    checks.integer("seed", seed)
    graph = nx.gnp_random_graph(n, p, seed=seed, directed=directed)
    connected = nx.is_strongly_connected(graph) if directed else nx.is_connected(graph)
    if n > 1 and not connected:
        raise checks.InvalidArgument(
            "p",
            f"too small: erdos_renyi(n={n}, p={p}, seed={seed}) is not connected; raise "
            f"p (connectivity needs p above about ln(n)/n = {math.log(n) / n:.2f}) or try "
            "another seed",
        )
    adj = nx.to_numpy_array(graph, nodelist=range(n)).T  # adj[i, j]: edge j -> i
    return _from_adj(f"erdos_renyi(p={p})", adj, weights, directed)


def from_networkx(
    graph: nx.Graph, weights: str = "metropolis", name: str | None = None
) -> Topology:
    """Topology of a networkx graph (nodes relabelled 0..n−1 in sorted order); a ``DiGraph``
    gives a column-stochastic (push-sum) topology."""
    import networkx as nx

    nodes = sorted(graph.nodes)
    adj = nx.to_numpy_array(graph, nodelist=nodes).T
    return _from_adj(name or "networkx", adj, weights, directed=graph.is_directed())


def from_matrix(w, stochastic: str = "doubly", name: str = "matrix") -> Topology:
    """Topology of a given mixing matrix ``W`` (``[n, n]``), or a sequence of them for a
    time-varying topology, validated as ``stochastic``."""
    arr = np.asarray(w, dtype=np.float64)
    mats = (arr,) if arr.ndim == 2 else tuple(np.asarray(m, np.float64) for m in arr)
    _validate(name, mats, stochastic, argument="w")
    return Topology(name, tuple(m.copy() for m in mats), stochastic)


def time_varying(*topologies: Topology, name: str | None = None) -> Topology:
    """Cycles through the given topologies' matrices, one per step."""
    if not topologies:
        raise checks.InvalidArgument("topologies", "must hold at least one topology")
    for t in topologies:
        check_topology("topologies", t)
    kinds = {t.stochastic for t in topologies}
    stochastic = kinds.pop() if len(kinds) == 1 else ("column" if "column" in kinds else "row")
    mats = tuple(m.copy() for t in topologies for m in t.matrices)
    return Topology(name or "+".join(t.name for t in topologies), mats, stochastic)
