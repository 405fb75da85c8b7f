"""Communication-efficient algorithms: compressed all-reduce, PowerSGD, CHOCO-SGD, local SGD,
DiLoCo and federated averaging. Each is a transform chain (see ``jdo.transforms``) around the
local gradient, so its whole state is in the optax state."""

from __future__ import annotations

import optax

from jdo import checks, transforms
from jdo._axis import WORKERS
from jdo.algorithms.allreduce_sgd import TrainState, from_transform
from jdo.algorithms.base import Algorithm, Cohort, LossFn, register
from jdo.compress import Compressor
from jdo.topology import Topology
from jdo.transforms.diloco import cohort_size, sampled_workers


@register("compressed_sgd")
def compressed_sgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    compressor: Compressor,
    *,
    error_feedback: str | None = "ef",
    warmup_steps: int = 0,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Data-parallel SGD whose gradient all-reduce is compressed (top-k, QSGD, sign, casts),
    with error feedback (EF or EF21): ``x ← x + opt(mean_i D(C(g_i + e_i)))``. See
    :func:`jdo.transforms.compressed_all_reduce`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.compressed_all_reduce(
        compressor,
        error_feedback=error_feedback,
        warmup_steps=warmup_steps,
        seed=seed,
        axis_name=axis_name,
    )
    return from_transform(loss_fn, optax.chain(tx, optimizer))


@register("powersgd")
def powersgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    rank: int = 4,
    min_compression: float = 2.0,
    warm_start: bool = True,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Data-parallel SGD with PowerSGD rank-r gradient all-reduce and error feedback
    (Vogels et al. 2019). See :func:`jdo.transforms.powersgd`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.powersgd(
        rank, min_compression=min_compression, warm_start=warm_start, seed=seed, axis_name=axis_name
    )
    return from_transform(loss_fn, optax.chain(tx, optimizer))


@register("choco_sgd")
def choco_sgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    topology: Topology,
    compressor: Compressor,
    *,
    gamma: float = 0.01,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """CHOCO-SGD (Koloskova et al. 2019): a local step, then compressed gossip of the change to
    the public copies with consensus step ``gamma`` (0.01: safe for 1% sparsification on a
    ring; 1.0 with the identity compressor is exact gossip). See
    :func:`jdo.transforms.choco`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.choco(topology, compressor, gamma=gamma, seed=seed, axis_name=axis_name)
    return from_transform(loss_fn, optax.chain(optimizer, tx))


@register("local_sgd")
def local_sgd(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    every: int = 16,
    start: int = 0,
    group_size: int | None = None,
    group_every: int | None = None,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Local SGD: local optimizer steps, parameters averaged every ``every`` steps; post-local
    SGD with ``start`` (average every step before it); hierarchical with ``group_size`` and
    ``group_every``. See :func:`jdo.transforms.local_sgd`."""
    checks.optimizer("optimizer", optimizer)
    if group_size is None:
        tx = transforms.local_sgd(every, start=start, axis_name=axis_name)
    else:
        if start:
            raise checks.InvalidArgument(
                "group_size",
                f"(hierarchical averaging) does not combine with start={start} "
                "(post-local SGD): set one of them",
            )
        group_every = 1 if group_every is None else group_every
        tx = transforms.hierarchical_local_sgd(group_size, group_every, every, axis_name=axis_name)
    return from_transform(loss_fn, optax.chain(optimizer, tx))


@register("diloco")
def diloco(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    outer: optax.GradientTransformation | None = None,
    sync_every: int = 64,
    fragments: int = 1,
    delay: int = 0,
    mixing: float = 0.0,
    compressor: Compressor | None = None,
    participation: float = 1.0,
    prox: float = 0.0,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """DiLoCo / Streaming DiLoCo with ``optimizer`` as the inner optimizer; see
    :func:`jdo.transforms.diloco`."""
    checks.optimizer("optimizer", optimizer)
    tx = transforms.diloco(
        optimizer,
        outer,
        sync_every=sync_every,
        fragments=fragments,
        delay=delay,
        mixing=mixing,
        compressor=compressor,
        participation=participation,
        prox=prox,
        seed=seed,
        axis_name=axis_name,
    )
    return from_transform(loss_fn, tx)


@register("fedavg")
def fedavg(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    local_steps: int = 16,
    participation: float = 1.0,
    prox: float = 0.0,
    server_optimizer: optax.GradientTransformation | None = None,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> Algorithm:
    """Federated averaging (McMahan et al. 2017): ``local_steps`` client steps of
    ``optimizer``, then the server averages the participating clients (``participation``
    fraction per round, deterministic by ``seed``). ``prox=μ``: FedProx (Li et al. 2020);
    ``server_optimizer`` (e.g. ``optax.adam``, ``optax.yogi``): FedOpt (Reddi et al. 2021) on
    the pseudo-gradient; the default ``optax.sgd(1.0)`` is plain averaging.

    With ``participation < 1`` the algorithm carries a :class:`~jdo.algorithms.Cohort`: the
    runner's vmap lifting then gathers each round's S sampled clients into an ``[S, ...]``
    block, runs only them (their all-reduce spans the S) and scatters them back, so a step
    costs S clients' compute, not W's (FedJAX's and Flower's sampled rounds); a non-sampled
    client does nothing and takes the new global model at the round's end. ``step`` on its
    own (your own lifting, ``shard_map``, a simulated cluster's clock) computes every client
    and masks the non-sampled ones out: the same global model when the client optimizer is
    stateless (SGD); with a stateful one the non-sampled clients' own optimizer state
    evolves there and stays put here."""
    checks.optimizer("optimizer", optimizer)
    checks.positive_int("local_steps", local_steps)
    if server_optimizer is not None:
        checks.optimizer("server_optimizer", server_optimizer)
    server = server_optimizer if server_optimizer is not None else optax.sgd(1.0)
    make = lambda p: transforms.diloco(
        optimizer,
        server,
        sync_every=local_steps,
        participation=p,
        prox=prox,
        seed=seed,
        axis_name=axis_name,
    )
    algorithm = from_transform(loss_fn, make(participation))
    if participation == 1.0:
        return algorithm
    cohort = Cohort(
        size=lambda n: cohort_size(participation, n),
        period=local_steps,
        # the round that step t belongs to syncs after inner step (t // H + 1) · H
        members=lambda t, n: sampled_workers(seed, participation, n, t // local_steps + 1),
        step=from_transform(loss_fn, make(1.0)).step,  # the cohort all participates
        adopt=_adopt_global,
    )
    return algorithm._replace(cohort=cohort)


def _adopt_global(member: TrainState, own: TrainState) -> TrainState:
    """After a round: a non-sampled client takes the new global model, the server's state
    and the counts from a sampled one; it keeps its own client optimizer state."""
    opt_state = member.opt_state._replace(inner=own.opt_state.inner)
    return TrainState(member.params, opt_state, member.step)
