"""Decentralized algorithms: workers only talk to their neighbours in a topology."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.comm.control import cond
from jdo.comm.gossip import mix, mix_rounds
from jdo.faults import is_directed, network_faults
from jdo.topology import Topology, check_topology
from jdo.transforms.clipped_gossip import ClippedGossip
from jdo.transforms.gossip import gossip
from jdo.worker_map import per_worker_compute


def _check(loss_fn, optimizer, topology, name, stochastic=("doubly",)):
    checks.function("loss_fn", loss_fn)
    checks.optimizer("optimizer", optimizer)
    check_topology("topology", topology, stochastic, purpose=name)


def _grad(loss_fn, params, batch, key):
    grad_fn = per_worker_compute(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grads = grad_fn(params, batch, key)  # chunkable: no collectives
    return grads, {"loss": loss, **metrics}


def _check_aggregator(aggregator, variant: str, every: int, rounds: int) -> None:
    if aggregator is None:
        return
    if not isinstance(aggregator, ClippedGossip):
        raise checks.InvalidArgument(
            "aggregator",
            f"dpsgd mixes with its neighbours and takes jdo.transforms.ClippedGossip(tau) or "
            f"None, got {aggregator} (all-gather rules go with allreduce_sgd)",
        )
    if variant != "atc" or every != 1 or rounds != 1:
        raise checks.InvalidArgument(
            "aggregator",
            "ClippedGossip needs variant='atc', gossip_every=1 and gossip_rounds=1",
        )


class DPSGDState(NamedTuple):
    params: Any
    opt_state: optax.OptState
    step: jax.Array


@register("dpsgd")
def dpsgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    *,
    variant: str = "atc",
    gossip_every: int = 1,
    gossip_rounds: int = 1,
    faults=None,
    aggregator: ClippedGossip | None = None,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Decentralized parallel SGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform
    Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
    Descent"), with any optax optimizer as the local step.

    With :math:`u_i = \mathrm{opt}(\nabla f_i(x_i; \xi_i))` the local update,

    - ``variant="atc"`` (adapt then combine): :math:`x_i \leftarrow \sum_j W_{ij}(x_j + u_j)`;
    - ``variant="cta"`` (combine then adapt, the paper's form):
      :math:`x_i \leftarrow \sum_j W_{ij} x_j + u_i`.

    ``gossip_every=H`` mixes on every H-th step only (periodic gossip, local steps between);
    ``gossip_rounds=R`` mixes R times per mixing step. ``faults`` (``jdo.faults.link_drop``,
    ``node_crash``, ``byzantine``; ``variant="atc"``): each mixing step uses the effective
    matrix of the links that delivered (:func:`jdo.transforms.gossip`), and Byzantine
    neighbours' messages are forged (:mod:`jdo.comm.robust_gossip`).
    ``aggregator=jdo.transforms.ClippedGossip(tau)`` (``variant="atc"``, one gossip round per
    step) replaces the weighted mean by ClippedGossip (He, Karimireddy & Jaggi 2022):
    :math:`x_i \leftarrow y_i + \sum_j W_{ij}\,\mathrm{clip}_\tau(y_j - y_i)`,
    :math:`y = x + u` (:func:`jdo.transforms.clipped_gossip`).
    """
    _check(loss_fn, optimizer, topology, "dpsgd")
    if faults is not None and variant != "atc":
        raise checks.InvalidArgument("faults", "need variant='atc' (the gossip transform)")
    checks.one_of("variant", variant, ("atc", "cta"))
    checks.positive_int("gossip_every", gossip_every)
    checks.positive_int("gossip_rounds", gossip_rounds)
    _check_aggregator(aggregator, variant, gossip_every, gossip_rounds)

    if aggregator is not None:
        tx = optax.chain(
            optimizer, aggregator.transform(topology, faults=faults, axis_name=axis_name)
        )
    elif variant == "atc":
        tx = optax.chain(
            optimizer,
            gossip(
                topology,
                every=gossip_every,
                rounds=gossip_rounds,
                axis_name=axis_name,
                faults=faults,
            ),
        )
    else:
        tx = optimizer

    def init(params, key):
        del key
        return DPSGDState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        grads, metrics = _grad(loss_fn, state.params, batch, key)  # 1. local gradient
        updates, opt_state = tx.update(grads, state.opt_state, state.params)  # 2. local step
        if variant == "atc":  # 3. (ATC: the chain's gossip transform already mixed)
            params = optax.apply_updates(state.params, updates)
        else:  # 3. CTA: mix the old params, add the local update
            mixed = cond(
                state.step % gossip_every == 0,
                lambda x: mix_rounds(
                    x, topology, state.step // gossip_every, gossip_rounds, axis_name
                ),
                lambda x: x,
                state.params,
            )
            params = optax.apply_updates(mixed, updates)
        return DPSGDState(params, opt_state, state.step + 1), metrics

    return Algorithm(init, step)


class GradientTrackingState(NamedTuple):
    params: Any  # x_i
    tracker: Any  # y_i: tracks the average gradient (1/W) Σ_j ∇f_j(x_j)
    prev_grad: Any  # ∇f_i at the previous iterate
    opt_state: optax.OptState
    step: jax.Array


@register("gradient_tracking")
def gradient_tracking(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    *,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Gradient tracking (DIGing: Nedić, Olshevsky & Shi 2017, "Achieving Geometric
    Convergence for Distributed Optimization over Time-Varying Graphs"; NEXT: Di Lorenzo &
    Scutari 2016).

    Each worker keeps a tracker :math:`y_i` of the average gradient. With
    :math:`g_i^t = \nabla f_i(x_i^t)` and :math:`y^{-1} = g^{-1} = 0`:

    .. math:: y_i^t = \sum_j W_{ij} y_j^{t-1} + g_i^t - g_i^{t-1}, \qquad
              x_i^{t+1} = \sum_j W_{ij} x_j^t + \mathrm{opt}(y_i^t).

    With ``optimizer=optax.sgd(α)`` this is DIGing, which converges exactly to the minimiser of
    :math:`\frac1W\sum_i f_i` with a constant step even when the workers' data differ, where
    D-PSGD stalls at a bias proportional to α and the heterogeneity. Mixing preserves
    :math:`\bar y^t = \bar g^t`. Each step mixes x and y: twice the bytes of D-PSGD.
    """
    _check(loss_fn, optimizer, topology, "gradient_tracking")

    def init(params, key):
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        return GradientTrackingState(
            params, zeros, zeros, optimizer.init(params), jnp.zeros((), jnp.int32)
        )

    def step(state, batch, key):
        grads, metrics = _grad(loss_fn, state.params, batch, key)  # 1. g^t at x^t
        mixed_x, mixed_y = mix((state.params, state.tracker), topology, state.step, axis_name)
        tracker = jax.tree.map(lambda y, g, g0: y + g - g0, mixed_y, grads, state.prev_grad)  # 2.
        updates, opt_state = optimizer.update(tracker, state.opt_state, state.params)  # 3.
        params = optax.apply_updates(mixed_x, updates)  # 4. x^{t+1} = W x^t + opt(y^t)
        new = GradientTrackingState(params, tracker, grads, opt_state, state.step + 1)
        return new, metrics

    return Algorithm(init, step)


class PushSumState(NamedTuple):
    numerator: Any  # x_i: the mass-carrying parameters
    weight: jax.Array  # w_i: the push-sum weight (f32 scalar, starts at 1)
    opt_state: optax.OptState
    step: jax.Array


def _debiased(state: PushSumState):
    return jax.tree.map(lambda x: x / state.weight.astype(x.dtype), state.numerator)


@register("push_sum")
def push_sum(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    *,
    faults=None,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Stochastic Gradient Push (Assran et al. 2019, "Stochastic Gradient Push for Distributed
    Deep Learning"; push-sum of Kempe et al. 2003): decentralized SGD on directed and
    time-varying graphs, where mixing is only column stochastic.

    Each worker holds a numerator :math:`x_i` and a weight :math:`w_i` (initially 1) and
    evaluates its gradient at the de-biased :math:`z_i = x_i / w_i`:

    .. math:: x_i \leftarrow x_i + \mathrm{opt}(\nabla f_i(z_i)), \qquad
              x_i \leftarrow \sum_j A_{ij} x_j, \quad w_i \leftarrow \sum_j A_{ij} w_j.

    Column stochasticity keeps :math:`\sum_i x_i` and :math:`\sum_i w_i = W`; the ratio
    :math:`z_i` converges to the average even though no worker averages with uniform weights.
    ``Algorithm.params`` returns :math:`z_i`.

    ``faults`` (``jdo.faults.link_drop(p)``, ``node_crash(workers, at_step, rejoin_step)``):
    step t mixes with ``topology.effective_matrix(t, M, lost_to="sender")``, ``M =
    faults.delivered(t, W, directed=jdo.faults.is_directed(topology))``: a sender whose
    message is lost keeps its weight (it must learn of the loss, e.g. by an acknowledgement),
    so every column still sums to 1 and :math:`\sum_i x_i`, :math:`\sum_i w_i = W` are
    conserved at every step; rows are not stochastic (plain gossip's guarantee is the
    opposite one). A down worker takes no local step and, its links lost, keeps its mass
    until it rejoins.
    """
    _check(loss_fn, optimizer, topology, "push_sum", stochastic=("doubly", "column"))
    faults = network_faults("faults", faults)
    if faults is not None:
        faults.check(topology.n)
    directed = is_directed(topology)

    def init(params, key):
        del key
        return PushSumState(
            params, jnp.ones((), jnp.float32), optimizer.init(params), jnp.zeros((), jnp.int32)
        )

    def step(state, batch, key):
        z = _debiased(state)
        grads, metrics = _grad(loss_fn, z, batch, key)  # 1. gradient at the de-biased params
        updates, opt_state = optimizer.update(grads, state.opt_state, z)  # 2. local step
        if faults is not None and faults.crashes:  # a down worker takes no local step
            up = faults.alive_traced(state.step, topology.n)[axis_index(axis_name)]
            updates = jax.tree.map(lambda u: jnp.where(up, u, 0), updates)
        numerator = optax.apply_updates(state.numerator, updates)
        lost = {}
        if faults is not None:  # a lost message's weight stays with its sender
            delivered = faults.delivered_traced(state.step, topology.n, directed)
            lost = {"delivered": delivered, "lost_to": "sender"}
        pair = (numerator, state.weight)
        numerator, weight = mix(pair, topology, state.step, axis_name, **lost)  # 3.
        return PushSumState(numerator, weight, opt_state, state.step + 1), metrics

    return Algorithm(init, step, params=_debiased)
