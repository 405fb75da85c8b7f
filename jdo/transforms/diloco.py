"""DiLoCo and the federated family (FedAvg, FedProx, FedOpt) as one optax transform."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index, axis_size
from jdo.comm.collectives import gather_mean, sum, varying  # noqa: A004
from jdo.comm.control import cond
from jdo.compress import Compressor, check_compressor, compress_tree, decompress_tree
from jdo.transforms.compressed import worker_key


class DiLoCoState(NamedTuple):
    inner: optax.OptState  # the worker's inner optimizer state (kept across rounds)
    outer: tuple  # one outer optimizer state per fragment
    anchor: Any  # the global (outer) parameters θ
    count: jax.Array  # int32: inner steps taken


def _fragments(num_leaves: int, fragments: int) -> list[list[int]]:
    return [
        [i for i in range(num_leaves) if i * fragments // num_leaves == f] for f in range(fragments)
    ]


def _check_diloco(
    inner, outer, sync_every, fragments, delay, mixing, compressor, participation, prox, seed
) -> tuple[optax.GradientTransformation, Compressor | None]:
    """:func:`diloco`'s argument checks (each names its parameter); returns the outer optimizer
    (the default filled in) and the compressor (None for the identity)."""
    checks.optimizer("inner", inner)
    if outer is not None:
        checks.optimizer("outer", outer)
    outer = outer if outer is not None else optax.sgd(0.7, momentum=0.9, nesterov=True)
    checks.positive_int("sync_every", sync_every)
    checks.positive_int("fragments", fragments)
    checks.non_negative_int("delay", delay)
    if delay >= sync_every:
        raise checks.InvalidArgument(
            "delay", f"must be in [0, sync_every) = [0, {sync_every}), got {delay}"
        )
    checks.number("mixing", mixing, low=0, high=1, high_open=True)
    if compressor is not None and type(check_compressor("compressor", compressor)) is Compressor:
        compressor = None  # the identity: the plain all-reduce, not an all-gather of payloads
    checks.probability("participation", participation, allow_zero=False)
    checks.non_negative("prox", prox)
    checks.integer("seed", seed)
    return outer, compressor


def _init(inner, outer, fragments: int, params) -> DiLoCoState:
    leaves = jax.tree.leaves(params)
    groups = _fragments(len(leaves), fragments)
    if any(not g for g in groups):
        raise checks.InvalidArgument(
            "fragments",
            f"must be at most the number of parameter leaves ({len(leaves)}), got {fragments}",
        )
    outer_states = tuple(outer.init([leaves[i] for i in g]) for g in groups)
    return DiLoCoState(inner.init(params), outer_states, params, jnp.zeros((), jnp.int32))


class _Outer(NamedTuple):
    """What the outer (sync) side of :func:`diloco` needs: its checked arguments."""

    outer: optax.GradientTransformation
    sync_every: int
    fragments: int
    delay: int
    mixing: float
    compressor: Compressor | None
    participation: float
    seed: int
    axis_name: str


def cohort_size(participation: float, num_workers: int) -> int:
    """Workers sampled per round: ``max(1, round(participation · W))``."""
    return max(1, round(participation * num_workers))


def _round_permutation(seed: int, num_workers: int, round_, fragment=0):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), fragment), round_)
    return jax.random.permutation(key, num_workers)


def sampled_workers(seed: int, participation: float, num_workers: int, round_, fragment=0):
    """The sorted ``[S]`` indices of the workers :func:`diloco` averages in round ``round_``
    (the first S of the round's permutation; the same draw as its participation mask)."""
    k = cohort_size(participation, num_workers)
    return jnp.sort(_round_permutation(seed, num_workers, round_, fragment)[:k])


def _participants(cfg: _Outer, round_, fragment):
    """This round's mask over all workers (the same on every worker) and its size."""
    n = axis_size(cfg.axis_name)
    k = cohort_size(cfg.participation, n)
    if k == n:
        return jnp.ones((n,), jnp.float32), n
    rank = jnp.argsort(_round_permutation(cfg.seed, n, round_, fragment))  # j's position
    return (rank < k).astype(jnp.float32), k


def _averaged_delta(cfg: _Outer, anchor, local, round_, fragment):
    """(1/|S|) Σ_{i∈S} (θ − x_i) over the participating workers."""
    mask, k = _participants(cfg, round_, fragment)
    delta = jax.tree.map(jnp.subtract, anchor, local)
    axis_name, compressor = cfg.axis_name, cfg.compressor
    if compressor is None:
        me = mask[axis_index(axis_name)]
        total = sum(jax.tree.map(lambda d: d * me, delta), axis_name)  # one all-reduce
        return jax.tree.map(lambda d: d / k, total)
    key = worker_key(cfg.seed, round_ * cfg.fragments + fragment, axis_name)
    payloads = compress_tree(compressor, delta, key)
    decode = lambda p: decompress_tree(compressor, p, delta)
    return gather_mean(payloads, decode, axis_name, weights=mask / k)


def _outer_steps(cfg: _Outer, local: list, anchor: list, outer_states: list, done):
    """After inner step ``done``: the outer step of each fragment whose sync falls on it and
    the merge of each fragment whose delay ends on it. Takes and returns the leaf lists
    ``(local, anchor, outer_states)`` (new lists)."""
    local, anchor, outer_states = list(local), list(anchor), list(outer_states)
    sync_every, fragments, axis_name = cfg.sync_every, cfg.fragments, cfg.axis_name
    for f, group in enumerate(_fragments(len(local), fragments)):
        offset = f * sync_every // fragments
        since = done - offset  # steps since this fragment's schedule began
        round_ = since // sync_every

        def sync(carry, f=f, group=group, round_=round_):
            anchor_f, outer_f = carry
            local_f = [local[i] for i in group]
            delta = _averaged_delta(cfg, anchor_f, local_f, round_, f)
            step, outer_f = cfg.outer.update(delta, outer_f, anchor_f)
            return varying((optax.apply_updates(anchor_f, step), outer_f), axis_name)

        is_sync = (since > 0) & (since % sync_every == 0)
        carry = ([anchor[i] for i in group], outer_states[f])
        new_anchor_f, outer_states[f] = cond(is_sync, sync, lambda c: varying(c, axis_name), carry)
        is_merge = (since - cfg.delay > 0) & ((since - cfg.delay) % sync_every == 0)
        for j, i in enumerate(group):
            anchor[i] = new_anchor_f[j]
            merged = cfg.mixing * local[i] + (1.0 - cfg.mixing) * anchor[i]
            local[i] = jnp.where(is_merge, merged.astype(local[i].dtype), local[i])
    return local, anchor, outer_states


def diloco(
    inner: optax.GradientTransformation,
    outer: optax.GradientTransformation | None = None,
    *,
    sync_every: int = 64,
    fragments: int = 1,
    delay: int = 0,
    mixing: float = 0.0,
    compressor: Compressor | None = None,
    participation: float = 1.0,
    prox: float = 0.0,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
    Language Models"): ``sync_every = H`` inner steps of ``inner`` on each worker, then an
    outer step of ``outer`` on the averaged pseudo-gradient:

    .. math:: \Delta = \theta - \tfrac1{|S|}\textstyle\sum_{i\in S} x_i, \qquad
              \theta \leftarrow \theta + \mathrm{outer}(\Delta), \qquad x_i \leftarrow \theta.

    ``outer`` defaults to SGD with Nesterov momentum 0.9 and learning rate 0.7 (the paper's).
    It takes the raw gradients (the inner optimizer is inside), and keeps every state in its
    own optax state. Options:

    - ``fragments=F``, ``delay=τ``, ``mixing=α``: Streaming DiLoCo (Douillard et al. 2025):
      the parameter leaves are split into F fragments synced on staggered schedules (fragment
      f at steps ``f·H/F + kH``); the new global fragment is merged τ steps after its sync
      (overlapping communication with compute) as ``x ← α x + (1 − α) θ``.
    - ``compressor``: the pseudo-gradients travel compressed (e.g. ``jdo.compress.fp8()``:
      quantised outer communication) through an all-gather of payloads. The identity
      (``jdo.compress.identity()``) is the same as ``None``: one all-reduce.
    - ``participation=p``: FedAvg-style partial participation; each round a fixed-size random
      subset (``max(1, round(p·W))`` workers, drawn from ``seed`` and the round) is averaged.
    - ``prox=μ``: FedProx (Li et al. 2020): the inner gradient gets ``μ (x − θ)``.

    FedAvg (McMahan et al. 2017) is ``inner=sgd``, ``outer=sgd(1.0)``; FedOpt (Reddi et al.
    2021) is an adaptive ``outer`` (``optax.adam``, ``optax.yogi``). With ``sync_every=1`` and
    ``outer=optax.sgd(1.0)`` this is the all-reduce of the inner updates. Works in
    ``shard_map`` (no ``optax.MultiSteps``, jax issue 23693).
    """
    outer, compressor = _check_diloco(
        inner, outer, sync_every, fragments, delay, mixing, compressor, participation, prox, seed
    )
    cfg = _Outer(
        outer, sync_every, fragments, delay, mixing, compressor, participation, seed, axis_name
    )

    def init_fn(params):
        return _init(inner, outer, fragments, params)

    def update_fn(updates, state, params=None):
        if params is None:
            raise checks.InvalidArgument(
                "params", "is required by diloco: call update(updates, state, params)"
            )
        if prox:
            updates = jax.tree.map(
                lambda g, x, a: g + prox * (x - a), updates, params, state.anchor
            )
        inner_updates, inner_state = inner.update(updates, state.inner, params)
        local = jax.tree.leaves(optax.apply_updates(params, inner_updates))
        anchor, treedef = jax.tree.flatten(state.anchor)
        local, anchor, outer_states = _outer_steps(cfg, local, anchor, state.outer, state.count + 1)
        new_params = treedef.unflatten(local)
        out = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new_params, params)
        new_state = DiLoCoState(
            inner_state, tuple(outer_states), treedef.unflatten(anchor), state.count + 1
        )
        return out, new_state

    return optax.GradientTransformation(init_fn, update_fn)
