r"""Adaptive communication as optax transforms: AdaComm's averaging period from the training
loss, Accordion's compressor switch from the gradient norm, MATCHA's random matchings under a
communication budget. Each keeps its controller in its optax state (so it checkpoints) and
records what it did at the last update (:func:`adaptive_metrics`: ``adaptive/H``,
``adaptive/level``, ``adaptive/matchings`` and ``traffic``).

``traffic`` is the fraction of the way from the step's least to its most traffic that this
update sent: 1 for an AdaComm step that averages (0 otherwise), 1 for an Accordion step on the
costlier compressor, ``active/m`` for MATCHA. The runner's byte count of a step that
communicates on some branches only is ``quiet + traffic · (full − quiet)`` (the branch taken),
where ``full`` and ``quiet`` are the compiled step's costliest and cheapest branches.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import ppermute
from jdo.comm.collectives import mean, varying
from jdo.comm.control import cond
from jdo.compress import Compressor, check_compressor, tree_wire_bytes
from jdo.system import clock
from jdo.topology import Topology, check_topology
from jdo.transforms.compressed import (
    ERROR_FEEDBACK,
    CompressedAllReduceState,
    compressed_all_reduce,
)

# ----------------------------------------------------------------------------------------------
# AdaComm
# ----------------------------------------------------------------------------------------------


class AdaCommState(NamedTuple):
    count: jax.Array  # int32: updates seen
    since: jax.Array  # int32: local steps since the last averaging
    period: jax.Array  # int32: the averaging period H in force
    loss_sum: jax.Array  # float32: this worker's losses summed since the last averaging
    initial: jax.Array  # float32: F(x_0), the first period's loss (0: not yet measured)
    evaluated: jax.Array  # int32: the update count at the last re-evaluation of H
    used: jax.Array  # int32: the period that governed the last update (adaptive/H)
    traffic: jax.Array  # float32: 1 if the last update averaged, else 0


def adacomm_period(loss, initial, every: int, min_every: int, max_every: int):
    r"""AdaComm's period (Wang & Joshi 2019, §4, constant learning rate):
    :math:`\lceil\sqrt{F_l / F_0}\,H_0\rceil` clipped to ``[min_every, max_every]``
    (float32, as the transform computes it)."""
    ratio = jnp.asarray(loss, jnp.float32) / jnp.asarray(initial, jnp.float32)
    h = jnp.ceil(jnp.sqrt(ratio) * jnp.float32(every))
    return jnp.clip(h, min_every, max_every).astype(jnp.int32)


def adacomm(
    every: int,
    *,
    min_every: int = 1,
    max_every: int | None = None,
    interval: int | None = None,
    axis_name: str = WORKERS,
) -> optax.GradientTransformationExtraArgs:
    r"""Local SGD whose averaging period adapts to the training loss: AdaComm (Wang & Joshi,
    "Adaptive Communication Strategies to Achieve the Best Error-Runtime Trade-off in
    Local-Update SGD", MLSys 2019). Placed last in a chain after the local optimizer, like
    :func:`jdo.transforms.local_sgd`; its ``update`` takes the worker's training loss at the
    current parameters as the keyword ``loss`` (``tx.update(g, s, params, loss=loss)``; the
    ``adacomm`` algorithm passes it). Workers step on their own and average their parameters
    when ``H`` local steps have passed since the last averaging; at re-evaluation

    .. math:: H \leftarrow \operatorname{clip}\big(\lceil \sqrt{F_l / F_0}\; H_0 \rceil,
              H_{\min}, H_{\max}\big)

    (the paper's rule for a constant learning rate, §4), with :math:`H_0` = ``every``, :math:`F_l`
    the workers' mean training loss over the local steps of the period just ended (all-reduced
    with the parameters, 4 bytes more) and :math:`F_0` that of the first period. The paper
    re-evaluates at the start of each wall-clock interval of :math:`T_0` seconds; here H is
    re-evaluated at the first averaging at least ``interval`` updates after the last one
    (``None``: at every averaging), so every worker decides alike without a clock. A loss
    that rises above :math:`F_0` lengthens H up to ``max_every``; use a positive loss
    (cross-entropy, squared error).

    With ``every == min_every == max_every == H`` it is ``local_sgd(H)`` bit for bit (no loss
    is all-reduced). ``every`` must lie in ``[min_every, max_every]``; ``max_every`` defaults
    to ``every`` (H only shortens, as the loss falls).
    """
    checks.positive_int("every", every)
    checks.positive_int("min_every", min_every)
    max_every = every if max_every is None else checks.positive_int("max_every", max_every)
    if not min_every <= every <= max_every:
        raise checks.InvalidArgument(
            "every", f"must lie in [min_every, max_every] = [{min_every}, {max_every}], got {every}"
        )
    if interval is not None:
        checks.positive_int("interval", interval)
    fixed = min_every == max_every

    def init_fn(params):
        del params
        i32, f32 = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
        return AdaCommState(i32, i32, jnp.full((), every, jnp.int32), f32, f32, i32, i32, f32)

    def update_fn(updates, state, params=None, *, loss=None, **extra):
        del extra
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by adacomm: call update(updates, state, params, loss=...)"
            )
        if loss is None and not fixed:
            raise checks.InvalidArgument(
                "loss", "is required by adacomm: call update(updates, state, params, loss=...)"
            )
        local = optax.apply_updates(params, updates)
        done = state.since + 1
        sync = done >= state.period
        loss_sum = state.loss_sum + (0.0 if fixed else jnp.asarray(loss, jnp.float32))
        per_worker = lambda tree: varying(tree, axis_name)
        if fixed:
            average = lambda x, f: (per_worker(mean(x, axis_name)), f)
        else:
            average = lambda x, f: per_worker(mean((x, f), axis_name))
        new, f = cond(sync, average, lambda x, f: (x, f), local, loss_sum / done)
        period, initial, evaluated = state.period, state.initial, state.evaluated
        if not fixed:
            due = state.count + 1 - evaluated >= (interval or 1)
            evaluate = sync & due
            initial = jnp.where(evaluate & (initial <= 0), f, initial)
            proposed = adacomm_period(f, initial, every, min_every, max_every)
            period = jnp.where(evaluate & (initial > 0), proposed, period)
            evaluated = jnp.where(evaluate, state.count + 1, evaluated)
        out = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
        return out, AdaCommState(
            count=state.count + 1,
            since=jnp.where(sync, 0, done),
            period=period,
            loss_sum=jnp.where(sync, 0.0, loss_sum),
            initial=initial,
            evaluated=evaluated,
            used=state.period,
            traffic=sync.astype(jnp.float32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# Accordion
# ----------------------------------------------------------------------------------------------


class AccordionState(NamedTuple):
    inner: CompressedAllReduceState  # the compressed all-reduce's state, shared by both
    level: jax.Array  # int32: the compressor of the next update (0: low, 1: high)
    accumulated: Any  # the reduced updates summed over the current interval
    previous: jax.Array  # float32: the accumulated norm of the last interval (-1: none)
    used: jax.Array  # int32: the level of the last update (adaptive/level)
    traffic: jax.Array  # float32: 1 if the last update used the costlier compressor


def accordion_critical(previous, norm, eta: float):
    r"""Accordion's test (Agarwal et al. 2021, its critical-regime detection): the regime is
    critical when
    :math:`|\,\|\Delta_{old}\| - \|\Delta_{new}\|\,| / \|\Delta_{old}\| \ge \eta`,
    and always before a first interval was measured (``previous <= 0``)."""
    previous = jnp.asarray(previous, jnp.float32)
    safe = jnp.where(previous > 0, previous, 1.0)
    return (previous <= 0) | (jnp.abs(previous - norm) / safe >= jnp.float32(eta))


def accordion(
    low: Compressor,
    high: Compressor,
    *,
    error_feedback: str | None = "ef",
    interval: int = 50,
    eta: float = 0.5,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""Compressed all-reduce switching between a light compressor ``low`` (critical regimes)
    and a heavy one ``high`` by Accordion's criterion (Agarwal, Wang, Lee, Venkataraman &
    Papailiopoulos, "Adaptive Gradient Communication via Critical Learning Regime
    Identification", MLSys 2021). Placed where :func:`jdo.transforms.compressed_all_reduce`
    goes (before the optimizer). Every ``interval`` updates (the paper's epoch) the norm of the
    reduced updates accumulated over the interval, :math:`\|\Delta_{new}\|`, is compared with
    the previous interval's:

    .. math:: \frac{|\,\|\Delta_{old}\| - \|\Delta_{new}\|\,|}{\|\Delta_{old}\|} \ge \eta
              \;\Rightarrow\; \text{low (critical)}, \quad \text{else high},

    with :math:`\eta = 0.5` as in the paper; training starts critical (``low``). The reduced
    updates are the same on every worker, so every worker decides alike with no extra
    communication. Both compressors share one error-feedback memory (``"ef"``, ``"ef21"`` or
    None, as in :func:`~jdo.transforms.compressed_all_reduce`); they must be
    :mod:`jdo.compress` compressors (PowerSGD's rank-dependent state does not switch).
    With ``low == high`` (or ``eta=0``: always critical) it is
    ``compressed_all_reduce(low, error_feedback=..., seed=...)`` bit for bit.
    """
    checks.one_of("error_feedback", error_feedback, ERROR_FEEDBACK)
    needs = f"error_feedback={error_feedback!r} (or use error_feedback=None)"
    check_compressor("low", low, contractive_for=needs if error_feedback else None)
    check_compressor("high", high, contractive_for=needs if error_feedback else None)
    checks.positive_int("interval", interval)
    checks.non_negative("eta", eta)
    make = lambda c: compressed_all_reduce(
        c, error_feedback=error_feedback, seed=seed, axis_name=axis_name
    )
    txs = [make(low), make(high)]
    same = low == high

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        i32 = jnp.zeros((), jnp.int32)
        minus_one, zero = jnp.full((), -1.0, jnp.float32), jnp.zeros((), jnp.float32)
        return AccordionState(txs[0].init(params), i32, zeros, minus_one, i32, zero)

    def update_fn(updates, state, params=None):
        del params
        if same:
            out, inner = txs[0].update(updates, state.inner)
        else:
            low_fn, high_fn = (lambda u, s, tx=tx: tx.update(u, s) for tx in txs)
            out, inner = cond(state.level == 0, low_fn, high_fn, updates, state.inner)
        accumulated = jax.tree.map(jnp.add, state.accumulated, out)
        end = inner.count % interval == 0
        norm = optax.global_norm(accumulated).astype(jnp.float32)
        critical = accordion_critical(state.previous, norm, eta)
        costly = int(tree_wire_bytes(high, updates) > tree_wire_bytes(low, updates))
        return out, AccordionState(
            inner=inner,
            level=jnp.where(end, jnp.where(critical, 0, 1), state.level),
            accumulated=jax.tree.map(lambda a: jnp.where(end, jnp.zeros_like(a), a), accumulated),
            previous=jnp.where(end, norm, state.previous),
            used=state.level,
            traffic=(same | (state.level == costly)).astype(jnp.float32),
        )

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# MATCHA
# ----------------------------------------------------------------------------------------------


class MatchaState(NamedTuple):
    count: jax.Array  # int32: updates seen (the step's activation draw)
    active: jax.Array  # int32: matchings active at the last update (adaptive/matchings)
    traffic: jax.Array  # float32: active / number of matchings


def matchings(topology: Topology) -> list[tuple[tuple[int, int], ...]]:
    """The undirected graph of ``topology`` (off-diagonal non-zeros of ``W``) as disjoint
    matchings: a greedy proper edge colouring (edges in sorted order, each the smallest colour
    free at both ends; at most ``2Δ − 1`` matchings, ``Δ`` on even rings)."""
    w = topology.mixing_matrix(0)
    rows, cols = np.nonzero(w)
    edges = sorted({(min(i, j), max(i, j)) for i, j in zip(rows, cols, strict=True) if i != j})
    colours: list[list[tuple[int, int]]] = []
    used: list[set[int]] = []
    for i, j in edges:
        c = next((c for c, nodes in enumerate(used) if i not in nodes and j not in nodes), None)
        if c is None:
            colours.append([])
            used.append(set())
            c = len(colours) - 1
        colours[c].append((int(i), int(j)))
        used[c] |= {i, j}
    return [tuple(m) for m in colours]


def laplacian(n: int, matching) -> np.ndarray:
    """The graph Laplacian of one matching on ``n`` nodes."""
    lap = np.zeros((n, n))
    for i, j in matching:
        lap[i, i] += 1
        lap[j, j] += 1
        lap[i, j] -= 1
        lap[j, i] -= 1
    return lap


def matcha_rho(alpha: float, laplacians, probabilities) -> float:
    r""":math:`\|\mathbb{E}[W^\top W] - J\|_2` for :math:`W = I - \alpha\sum_j B_j L_j`,
    :math:`B_j \sim \text{Bernoulli}(p_j)` independent (MATCHA's spectral norm, Wang et al.
    2019, the quantity its α minimises):
    :math:`\mathbb{E}[W^2] = I - 2\alpha\bar L + \alpha^2(\bar L^2 + \sum_j p_j(1-p_j)
    L_j^2)`, :math:`\bar L = \sum_j p_j L_j`."""
    n = laplacians[0].shape[0]
    mean_l = sum(p * lap for p, lap in zip(probabilities, laplacians, strict=True))
    var = sum(p * (1 - p) * lap @ lap for p, lap in zip(probabilities, laplacians, strict=True))
    ew2 = np.eye(n) - 2 * alpha * mean_l + alpha**2 * (mean_l @ mean_l + var)
    return float(np.linalg.norm(ew2 - np.full((n, n), 1.0 / n), 2))


class MatchaPlan(NamedTuple):
    """MATCHA's decomposition: the matchings, each one's activation probability and the
    mixing weight ``alpha``."""

    n: int
    matchings: tuple
    probabilities: tuple[float, ...]
    alpha: float

    def matrix(self, active) -> np.ndarray:
        """``W = I − α Σ_j B_j L_j`` for the activation vector ``active`` (``[m]`` bools)."""
        w = np.eye(self.n)
        for on, m in zip(np.asarray(active, bool), self.matchings, strict=True):
            if on:
                w -= self.alpha * laplacian(self.n, m)
        return w


def matcha_plan(topology: Topology, budget: float) -> MatchaPlan:
    r"""MATCHA's plan under the communication budget :math:`C_b` = ``budget`` (the expected
    fraction of matchings active per step): every matching active with probability
    :math:`p_j = C_b` (a simpler rule than MATCHA's optimised probabilities, documented), and
    :math:`\alpha` minimising :func:`matcha_rho` over :math:`(0, 1/\Delta]` (:math:`\Delta`
    the largest degree, so every :math:`W` stays non-negative: symmetric and doubly
    stochastic at every budget), on a grid of 2,000 points refined once."""
    check_topology("topology", topology, ("doubly",), purpose="matcha (undirected graphs)")
    checks.probability("budget", budget, allow_zero=False)
    if topology.period != 1:
        raise checks.InvalidArgument("topology", "must be static for matcha (one mixing matrix)")
    w = topology.mixing_matrix(0)
    if not np.allclose(w != 0, (w != 0).T):
        raise checks.InvalidArgument("topology", "must be undirected for matcha")
    ms = matchings(topology)
    if not ms:
        return MatchaPlan(topology.n, (), (), 0.0)
    laps = [laplacian(topology.n, m) for m in ms]
    probabilities = [float(budget)] * len(ms)
    top = 1.0 / float(np.max(sum(laps).diagonal()))
    grid = np.linspace(top / 2000, top, 2000)
    best = grid[int(np.argmin([matcha_rho(a, laps, probabilities) for a in grid]))]
    fine = np.linspace(max(best - top / 2000, top / 4000), min(best + top / 2000, top), 201)
    best = fine[int(np.argmin([matcha_rho(a, laps, probabilities) for a in fine]))]
    return MatchaPlan(topology.n, tuple(ms), tuple(probabilities), float(best))


def matcha_activations(seed: int, count, probabilities) -> jax.Array:
    """The step's activation vector ``[m]`` (bool), the same on every worker: Bernoulli draws
    from ``fold_in(key(seed), count)``."""
    key = jax.random.fold_in(jax.random.key(seed), count)
    return jax.random.bernoulli(key, jnp.asarray(probabilities, jnp.float32))


def _exchange(x, perm, axis_name: str):
    """One matching's swap (unmatched workers keep their own value), clocked."""
    clock.exchange([perm], clock.tree_bytes(x), axis_name)
    return varying(ppermute(x, axis_name, perm), axis_name)


def matcha(
    topology: Topology, budget: float, seed: int = 0, *, axis_name: str = WORKERS
) -> optax.GradientTransformation:
    r"""MATCHA (Wang, Sahu, Yang, Joshi & Kar, "MATCHA: Speeding Up Decentralized SGD via
    Matching Decomposition Sampling", 2019): gossip over a random subset of the topology's
    matchings. The graph is split into disjoint matchings :math:`M_1..M_m`
    (:func:`matchings`); at each update matching j is active with probability :math:`p_j`
    (:func:`matcha_plan`: :math:`p_j` = ``budget``), drawn from a key shared by all workers
    (seed and update count), and after the local update (adapt-then-combine, like
    :func:`jdo.transforms.gossip`)

    .. math:: x \leftarrow W(t)\,(x + u), \qquad W(t) = I - \alpha \textstyle\sum_j B_j(t) L_j,

    one ``ppermute`` per active matching (an idle matching sends nothing: a ``cond``).
    ``budget=1`` activates every matching every step. Needs ``params`` in ``update``; the
    topology must be static and undirected.
    """
    plan = matcha_plan(topology, budget)
    checks.integer("seed", seed)
    n, m = plan.n, len(plan.matchings)
    perms = []
    for matching in plan.matchings:
        partner = list(range(n))
        for i, j in matching:
            partner[i], partner[j] = j, i
        perms.append(tuple((src, dst) for dst, src in enumerate(partner)))

    def init_fn(params):
        del params
        zero = jnp.zeros((), jnp.int32)
        return MatchaState(zero, zero, jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by matcha: call update(updates, state, params)"
            )
        local = optax.apply_updates(params, updates)
        active = matcha_activations(seed, state.count, plan.probabilities)
        pull = jax.tree.map(jnp.zeros_like, local)  # Σ_j B_j (x_i − x_partner)
        for j, perm in enumerate(perms):
            exchange = lambda x, perm=perm: _exchange(x, perm, axis_name)
            other = cond(active[j], exchange, lambda x: x, local)
            pull = jax.tree.map(lambda a, x, o: a + (x - o), pull, local, other)
        alpha = plan.alpha
        out = jax.tree.map(lambda x, a, p: (x - alpha * a - p).astype(p.dtype), local, pull, params)
        count = jnp.sum(active.astype(jnp.int32))
        traffic = count.astype(jnp.float32) / max(m, 1)
        return out, MatchaState(state.count + 1, count, traffic)

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# Step metrics
# ----------------------------------------------------------------------------------------------

_STATES = (AdaCommState, AccordionState, MatchaState)


def adaptive_metrics(opt_state) -> dict[str, jax.Array]:
    """What the adaptive transforms in ``opt_state`` did at the last update: ``adaptive/H``
    (AdaComm's period), ``adaptive/level`` (Accordion's compressor: 0 low, 1 high),
    ``adaptive/matchings`` (MATCHA's active matchings) and ``traffic`` (see the module
    docstring; the product over several would be ambiguous, so one transform at most)."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, _STATES))
        if isinstance(s, _STATES)
    ]
    if len(found) > 1:
        raise checks.InvalidArgument("tx", "may hold one adaptive transform at most")
    if not found:
        return {}
    s = found[0]
    name = {AdaCommState: "adaptive/H", AccordionState: "adaptive/level"}.get(type(s))
    used = s.used if name else s.active
    return {name or "adaptive/matchings": used, "traffic": s.traffic}


__all__ = [
    "AccordionState",
    "AdaCommState",
    "MatchaPlan",
    "MatchaState",
    "accordion",
    "accordion_critical",
    "adacomm",
    "adacomm_period",
    "adaptive_metrics",
    "matcha",
    "matcha_activations",
    "matcha_plan",
    "matchings",
]
