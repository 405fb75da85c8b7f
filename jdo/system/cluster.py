r"""A simulated cluster: links priced by the α–β model, collectives priced by their algorithm.

A :class:`Link` moves ``S`` bytes in :math:`\alpha + S/B` seconds (Hockney 1994). A
:class:`Cluster` has ``nodes`` × ``workers_per_node`` workers; workers ``i`` and ``j`` share a
node when ``i // k == j // k`` (k = ``workers_per_node``) and then talk over ``intra``,
otherwise over ``inter``. ``inter.bandwidth_Bps`` is per worker (one NIC per GPU, as on a DGX).

Collective sizes follow nccl-tests: ``S`` is the all-reduce's buffer, the all-gather's OUTPUT
(n × one worker's shard), the reduce-scatter's INPUT, the all-to-all's buffer (each worker's
input), a broadcast's buffer and a permute's message. A collective over ``n`` workers costs
:math:`a\,\alpha + b/B` for a step count ``a`` and critical-path bytes ``b`` of its algorithm;
a group of one worker costs nothing. With :math:`f = (n-1)/n` and :math:`L = \lceil\lg n\rceil`:

======================  ===========================  ============================  ===========
kind                    ring                         tree                          wire bytes
                                                                                   ring / tree
======================  ===========================  ============================  ===========
all-reduce              2(n-1) α + 2 f S/B           L (α + S/B)                   2fS / L S
all-gather              (n-1) α + f S/B              L α + f S/B                   fS / fS
reduce-scatter          (n-1) α + f S/B              L α + f S/B                   fS / fS
all-to-all              (n-1) α + f S/B              L α + L S/(2B)                fS / L S/2
broadcast               (n-1) α + S/B                L (α + S/B)                   fS / fS
collective-permute      α + S/B                      α + S/B                       S / S
======================  ===========================  ============================  ===========

Ring: Patarasuk & Yuan 2009 (all-reduce, bandwidth-optimal), the ring all-gather and
reduce-scatter of Thakur, Rabenseifner & Gropp 2005, the pairwise-exchange all-to-all of the
same paper (n − 1 rounds of S/n), and a pipelined chain broadcast (n − 1 hops, the message in
chunks so the bandwidth term is S/B: nccl-tests' broadcast busbw = algbw). Tree: Thakur et al.
2005's logarithmic algorithms: recursive doubling (all-reduce, all-gather), recursive halving
(reduce-scatter), Bruck's all-to-all (Bruck et al. 1997) and a binomial-tree broadcast; for
``n`` not a power of two they are charged :math:`\lceil\lg n\rceil` rounds.

Which link a flat (ring or tree) collective uses: ``intra`` when every group sits inside one
node, otherwise ``inter`` (a ring that leaves a node runs at its slowest hop). Without
``per_node`` (workers of the group per node), groups are taken as consecutive workers: inside
one node when ``n <= k`` and ``n`` divides ``k``; spanning ``n / k`` whole nodes when ``k``
divides ``n``. :meth:`Cluster.group_layout` reads ``per_node`` from actual replica groups
(strided groups, such as a psum over the outer axis of a 2-D mesh, touch one worker per node).

Hierarchical (two-level, as NCCL/Horovod's hierarchical all-reduce and BlueConnect, Cho et al.
2019): a group of ``n = m k`` workers with ``k >= 2`` on each of ``m >= 2`` nodes (k here is
``per_node``) runs a ring inside each node and ``k`` concurrent rings across nodes (one per
local rank) on ``1/k`` of the data:

- all-reduce: intra reduce-scatter of S, inter all-reduce of S/k over m, intra all-gather of S,
  :math:`2[(k-1)\alpha_i + \tfrac{k-1}{k} \tfrac{S}{B_i}]
  + 2(m-1)\alpha_e + 2\tfrac{m-1}{m}\tfrac{S}{k B_e}`
- reduce-scatter: intra reduce-scatter of S, then inter reduce-scatter of S/k over m
- all-gather: inter all-gather of output S/k over m, then intra all-gather of output S
- all-to-all: intra all-to-all of S (regroup by destination local rank), then inter all-to-all
  of S over m (the two-phase all-to-all of e.g. DeepSpeed-MoE / Tutel)
- broadcast: intra scatter of S from the root ((k−1)α_i + (k−1)/k·S/B_i), k concurrent inter
  chain broadcasts of S/k over m ((m−1)α_e + S/(k B_e)), intra all-gather of S
- collective-permute: point to point, α_e + S/B_e.

A group inside one node, or with one worker per node, falls back to the flat ring on the link
the rule above picks (with k = 1 or m = 1 the two-level formulas are the flat ring's anyway,
except broadcast).

References: Hockney 1994, "The communication challenge for MPP", Parallel Computing 20;
Thakur, Rabenseifner & Gropp 2005, "Optimization of Collective Communication Operations in
MPICH", IJHPCA 19(1); Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for
clusters of workstations", JPDC 69(2); Bruck, Ho, Kipnis, Upfal & Weathersby 1997, "Efficient
algorithms for all-to-all communications in multiport message-passing systems", IEEE TPDS 8(11);
Cho et al. 2019, "BlueConnect: Decomposing all-reduce for deep learning on heterogeneous network
hierarchy", SysML; nccl-tests' PERFORMANCE.md (algbw, busbw).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jdo import checks
from jdo.system.compute import ComputeModel, StepProfile, fixed
from jdo.system.stragglers import Stragglers

KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "broadcast",
)
COLLECTIVES = ("ring", "tree", "hierarchical")
BARRIERS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast")


@dataclasses.dataclass(frozen=True)
class Link:
    r"""A link that moves ``nbytes`` in :math:`\alpha + \text{nbytes}/B` seconds (Hockney 1994).

    Attributes:
      latency_s: α, seconds per message, ``>= 0``.
      bandwidth_Bps: B, bytes per second, ``> 0``.
    """

    latency_s: float
    bandwidth_Bps: float

    def __post_init__(self):
        object.__setattr__(self, "latency_s", checks.non_negative("latency_s", self.latency_s))
        object.__setattr__(
            self, "bandwidth_Bps", checks.positive("bandwidth_Bps", self.bandwidth_Bps)
        )

    def time(self, nbytes: float) -> float:
        """Seconds to send one message of ``nbytes``: ``latency_s + nbytes / bandwidth_Bps``."""
        return self.latency_s + float(nbytes) / self.bandwidth_Bps


# One algorithm on one link: (latency steps a, critical-path bytes b, wire bytes w per worker);
# it takes a * alpha + b / B seconds.
Cost = tuple[float, float, float]


def ring_cost(kind: str, nbytes: float, n: int) -> Cost:
    """Steps, critical-path bytes and mean wire bytes per worker of the ring algorithm of
    ``kind`` over ``n`` workers (see the module docstring)."""
    s, f = float(nbytes), (n - 1) / n
    if kind == "all-reduce":
        return 2 * (n - 1), 2 * f * s, 2 * f * s
    if kind in ("all-gather", "reduce-scatter", "all-to-all"):
        return n - 1, f * s, f * s
    if kind == "broadcast":
        return n - 1, s, f * s
    return 1, s, s  # collective-permute


def tree_cost(kind: str, nbytes: float, n: int) -> Cost:
    """Steps, critical-path bytes and mean wire bytes per worker of Thakur et al. 2005's
    logarithmic algorithm of ``kind`` over ``n`` workers (see the module docstring)."""
    s, f, rounds = float(nbytes), (n - 1) / n, (n - 1).bit_length()  # ceil(lg n)
    if kind == "all-reduce":  # recursive doubling: the whole buffer every round
        return rounds, rounds * s, rounds * s
    if kind in ("all-gather", "reduce-scatter"):  # recursive doubling / halving
        return rounds, f * s, f * s
    if kind == "all-to-all":  # Bruck: half the buffer every round
        return rounds, rounds * s / 2, rounds * s / 2
    if kind == "broadcast":  # binomial tree: n - 1 messages of S in all
        return rounds, rounds * s, f * s
    return 1, s, s  # collective-permute


def _priced(link: Link, cost: Cost) -> float:
    steps, critical, _ = cost
    return steps * link.latency_s + critical / link.bandwidth_Bps


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cluster:
    """A simulated cluster of ``nodes`` × ``workers_per_node`` workers.

    Attributes:
      nodes: number of nodes; None derives it from the run's workers (:meth:`for_workers`).
      workers_per_node: k; workers ``i`` and ``j`` share a node when ``i // k == j // k``.
      intra: the link between workers of one node (required when k > 1, unused when k = 1).
      inter: the link between nodes (bandwidth per worker); with k = 1 every link is inter.
      compute: a compute model (``jdo.system.fixed``, ``measured``, ``flops``).
      stragglers: a straggler model (``jdo.system.shifted_exponential``, ...) or None.
      collective: the collective algorithm, ``"ring"``, ``"tree"`` or ``"hierarchical"``.
      speeds: per-worker device speed (compute seconds are divided by it); a list shorter than
        the workers is cycled; None: every worker at speed 1.
      seed: straggler draws use ``jax.random.key(seed)``.
    """

    nodes: int | None = None
    workers_per_node: int = 1
    intra: Link | None = None
    inter: Link
    compute: ComputeModel = fixed(0.0)
    stragglers: Stragglers | None = None
    collective: str = "ring"
    speeds: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        _validate(self)
        if self.speeds is not None:
            speeds = tuple(checks.positive("speeds", s) for s in self.speeds)
            object.__setattr__(self, "speeds", speeds)

    # ---- shape -------------------------------------------------------------------------

    def for_workers(self, workers: int) -> Cluster:
        """This cluster sized for a run of ``workers`` workers: ``nodes`` derived when None,
        else checked (``nodes * workers_per_node`` must equal ``workers``)."""
        workers = checks.positive_int("workers", workers)
        k = self.workers_per_node
        if self.nodes is None:
            if workers % k:
                raise checks.InvalidArgument(
                    "workers_per_node", f"must divide the number of workers ({workers}), got {k}"
                )
            nodes = workers // k
        elif self.nodes * k != workers:
            raise checks.InvalidArgument(
                "nodes",
                f"x workers_per_node must equal the number of workers: {self.nodes} x {k} = "
                f"{self.nodes * k}, but the run has {workers} workers (nodes: null derives it)",
            )
        else:
            nodes = self.nodes
        if self.speeds is not None and len(self.speeds) > workers:
            raise checks.InvalidArgument(
                "speeds", f"has {len(self.speeds)} entries for {workers} workers (at most one each)"
            )
        return dataclasses.replace(self, nodes=nodes)

    @property
    def size(self) -> int:
        """Number of workers, ``nodes * workers_per_node``."""
        if self.nodes is None:
            raise checks.InvalidArgument("nodes", "is not set: call for_workers(workers) first")
        return self.nodes * self.workers_per_node

    def node_of(self, worker: int) -> int:
        """The node worker ``worker`` sits on: ``worker // workers_per_node``."""
        worker = checks.non_negative_int("worker", worker)
        if self.nodes is not None and worker >= self.size:
            raise checks.InvalidArgument(
                "worker", f"must be below the cluster's {self.size} workers, got {worker}"
            )
        return worker // self.workers_per_node

    def link(self, src: int, dst: int) -> Link:
        """The link a message from ``src`` to ``dst`` uses: ``intra`` iff they share a node and
        ``workers_per_node > 1``, else ``inter``."""
        same = self.node_of(src) == self.node_of(dst)
        return self.intra if same and self.workers_per_node > 1 else self.inter

    def message_time(self, src: int, dst: int, nbytes: float) -> float:
        """Seconds for one message of ``nbytes`` from ``src`` to ``dst``: α + S/B on its link."""
        return self.link(src, dst).time(checks.non_negative("nbytes", nbytes))

    # ---- compute -----------------------------------------------------------------------

    def speed(self, worker: int) -> float:
        """Device speed of ``worker`` (``speeds`` cycled; 1.0 without ``speeds``)."""
        worker = checks.non_negative_int("worker", worker)
        return 1.0 if self.speeds is None else self.speeds[worker % len(self.speeds)]

    def worker_speeds(self, workers: int) -> np.ndarray:
        """``[speed(0), ..., speed(workers - 1)]`` as float64."""
        return np.array([self.speed(w) for w in range(workers)], np.float64)

    def compute_seconds(self, worker: int, profile: StepProfile | None = None) -> float:
        """Compute seconds of ``worker``'s step before stragglers:
        ``compute.base_seconds(profile) / speed(worker)``."""
        return self.compute.base_seconds(profile or StepProfile()) / self.speed(worker)

    # ---- collectives -------------------------------------------------------------------

    def collective_time(
        self, kind: str, nbytes: float, group_size: int, per_node: int | None = None
    ) -> float:
        """Seconds of one collective ``kind`` on ``nbytes`` (nccl-tests' buffer size) over a
        group of ``group_size`` workers, under ``self.collective`` (formulas: module docs).

        ``per_node``: how many of the group's workers share each node it touches (see
        :meth:`group_layout`); None assumes groups of consecutive workers."""
        phases = self._phases(kind, nbytes, group_size, per_node)
        return sum(_priced(link, cost) for link, cost in phases)

    def wire_bytes(
        self, kind: str, nbytes: float, group_size: int, per_node: int | None = None
    ) -> float:
        """Bytes ONE worker sends (mean over the group) in one collective ``kind`` on
        ``nbytes`` over ``group_size`` workers, under ``self.collective``."""
        return sum(cost[2] for _, cost in self._phases(kind, nbytes, group_size, per_node))

    def flat_link(self, group_size: int, per_node: int | None = None) -> Link:
        """The link a flat collective over the group runs on: ``intra`` when the whole group
        sits inside one node, else ``inter`` (a ring that leaves a node runs at its slowest
        hop)."""
        inside = self.workers_per_node > 1 and self._per_node(group_size, per_node) == group_size
        return self.intra if inside else self.inter

    def group_layout(self, groups) -> int:
        """Workers per node of replica ``groups`` (lists of worker ids), for ``per_node``: the
        count each group has on every node it touches when that count is the same for all
        groups and nodes, else 1 (priced as if every hop left the node)."""
        counts = set()
        for group in groups:
            nodes = [self.node_of(int(w)) for w in group]
            counts |= {nodes.count(node) for node in set(nodes)}
        return counts.pop() if len(counts) == 1 else 1

    def _per_node(self, n: int, per_node: int | None) -> int:
        k = self.workers_per_node
        if per_node is None:  # groups of consecutive workers
            if n <= k and k % n == 0:
                return n
            return k if n % k == 0 else 1
        per_node = checks.positive_int("per_node", per_node)
        if n % per_node or per_node > k:
            raise checks.InvalidArgument(
                "per_node",
                f"must divide group_size ({n}) and be at most workers_per_node ({k}), "
                f"got {per_node}",
            )
        return per_node

    def _phases(self, kind, nbytes, group_size, per_node) -> list[tuple[Link, Cost]]:
        checks.one_of("kind", kind, KINDS)
        nbytes = checks.non_negative("nbytes", nbytes)
        n = checks.positive_int("group_size", group_size)
        if self.nodes is not None and n > self.size:
            raise checks.InvalidArgument(
                "group_size", f"must be at most the cluster's {self.size} workers, got {n}"
            )
        if n == 1:
            return []
        local = self._per_node(n, per_node)
        if self.collective == "hierarchical" and 1 < local < n:
            return _hierarchical(kind, nbytes, local, n // local, self.intra, self.inter)
        algorithm = tree_cost if self.collective == "tree" else ring_cost
        return [(self.flat_link(n, local), algorithm(kind, nbytes, n))]


def _hierarchical(kind, s, k, m, intra, inter) -> list[tuple[Link, Cost]]:
    """The two-level phases of ``kind`` over ``m`` nodes of ``k`` workers (module docs)."""
    n = k * m
    if kind == "all-reduce":
        return [
            (intra, ring_cost("reduce-scatter", s, k)),
            (inter, ring_cost("all-reduce", s / k, m)),
            (intra, ring_cost("all-gather", s, k)),
        ]
    if kind == "reduce-scatter":
        return [(intra, ring_cost(kind, s, k)), (inter, ring_cost(kind, s / k, m))]
    if kind == "all-gather":
        return [(inter, ring_cost(kind, s / k, m)), (intra, ring_cost(kind, s, k))]
    if kind == "all-to-all":
        return [(intra, ring_cost(kind, s, k)), (inter, ring_cost(kind, s, m))]
    if kind == "broadcast":
        scatter = (k - 1) / k * s
        return [
            (intra, (k - 1, scatter, scatter / n)),  # only the root sends: mean over n
            (inter, ring_cost("broadcast", s / k, m)),
            (intra, ring_cost("all-gather", s, k)),
        ]
    return [(inter, ring_cost(kind, s, n))]  # collective-permute


def _validate(cluster: Cluster) -> None:
    if cluster.nodes is not None:
        checks.positive_int("nodes", cluster.nodes)
    k = checks.positive_int("workers_per_node", cluster.workers_per_node)
    if not isinstance(cluster.inter, Link):
        raise checks.WrongType("inter", f"must be a jdo.system.Link, got {cluster.inter!r}")
    if cluster.intra is not None and not isinstance(cluster.intra, Link):
        raise checks.WrongType("intra", f"must be a jdo.system.Link or null, got {cluster.intra!r}")
    if k > 1 and cluster.intra is None:
        raise checks.InvalidArgument(
            "intra", f"is required when workers_per_node > 1 (got workers_per_node={k})"
        )
    if not hasattr(cluster.compute, "base_seconds"):
        raise checks.WrongType(
            "compute",
            f"must be a compute model (jdo.system.fixed, measured, flops), got {cluster.compute!r}",
        )
    if cluster.stragglers is not None and not hasattr(cluster.stragglers, "sample"):
        raise checks.WrongType(
            "stragglers",
            "must be a straggler model (jdo.system.shifted_exponential, lognormal, slow_worker, "
            f"pauses) or null, got {cluster.stragglers!r}",
        )
    checks.one_of("collective", cluster.collective, COLLECTIVES)
    if cluster.speeds is not None and (
        isinstance(cluster.speeds, str | bytes) or not isinstance(cluster.speeds, Sequence)
    ):
        raise checks.WrongType("speeds", f"must be a list of numbers, got {cluster.speeds!r}")
    if cluster.speeds is not None and not len(cluster.speeds):
        raise checks.InvalidArgument("speeds", "must not be empty (null: every worker at speed 1)")
    checks.integer("seed", cluster.seed)
