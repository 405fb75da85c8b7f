"""Compressed all-reduce of the updates, with error feedback, as an optax transform."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index
from jdo.comm.collectives import gather_mean, mean, varying
from jdo.comm.control import cond
from jdo.compress import Compressor, check_compressor, compress_tree, decompress_tree

ERROR_FEEDBACK = ("ef", "ef21", None)


class CompressedAllReduceState(NamedTuple):
    count: jax.Array  # int32
    memory: Any  # EF: the compression error e_i; EF21: the worker's estimate g_i; else ()
    estimate: Any  # EF21: the shared estimate g = mean_i g_i; else ()


def worker_key(seed: int, count, axis_name: str = WORKERS) -> jax.Array:
    """A key for this worker and step: ``fold_in(fold_in(key(seed), worker), count)``."""
    key = jax.random.fold_in(jax.random.key(seed), axis_index(axis_name))
    return jax.random.fold_in(key, count)


def compressed_all_reduce(
    compressor: Compressor,
    *,
    error_feedback: str | None = "ef",
    warmup_steps: int = 0,
    seed: int = 0,
    axis_name: str = WORKERS,
) -> optax.GradientTransformation:
    r"""All-reduce mean of the updates, each worker sending a compressed payload.

    Every worker all-gathers the others' payloads and averages their decompressions. With
    ``error_feedback="ef"`` (Seide et al. 2014; Karimireddy et al. 2019, "Error Feedback Fixes
    SignSGD") each worker keeps what compression dropped and adds it back next time:

    .. math:: p_i = g_i + e_i, \quad e_i \leftarrow p_i - \mathcal{D}(\mathcal{C}(p_i)), \quad
              g \leftarrow \tfrac1W \textstyle\sum_j \mathcal{D}(\mathcal{C}(p_j)).

    With ``"ef21"`` (Richtárik et al. 2021, "EF21") each worker keeps an estimate :math:`h_i`
    and sends the compressed change :math:`c_i = \mathcal{C}(g_i - h_i)`;
    :math:`h_i \leftarrow h_i + \mathcal{D}(c_i)` and every worker updates the shared estimate
    :math:`h \leftarrow h + \frac1W\sum_j \mathcal{D}(c_j)`, the returned update.
    ``None`` sends :math:`\mathcal{C}(g_i)` as is. For the first ``warmup_steps`` updates the
    dense mean is used (the compressed state is still kept consistent).

    Args:
      compressor: a :mod:`jdo.compress` compressor (top_k(0.01), qsgd(), scaled_sign(), ...);
        with error feedback a contractive one (``random_k(scale=False)``, not the scaled
        unbiased random-k, whose error memory grows without bound).
      error_feedback: ``"ef"``, ``"ef21"`` or ``None``.
      warmup_steps: dense steps before compression starts.
      seed: for random compressors; each worker and step folds in its own key.
      axis_name: the workers' named axis.
    """
    checks.one_of("error_feedback", error_feedback, ERROR_FEEDBACK)
    needs = f"error_feedback={error_feedback!r} (or use error_feedback=None)"
    check_compressor("compressor", compressor, contractive_for=needs if error_feedback else None)
    checks.non_negative_int("warmup_steps", warmup_steps)
    checks.integer("seed", seed)

    def decode(like):  # a payload decoder for values shaped like `like`
        return lambda payloads: decompress_tree(compressor, payloads, like)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        memory = zeros if error_feedback else ()
        estimate = zeros if error_feedback == "ef21" else ()
        return CompressedAllReduceState(jnp.zeros((), jnp.int32), memory, estimate)

    def compressed(updates, state):
        key = worker_key(seed, state.count, axis_name)
        if error_feedback == "ef21":
            delta = jax.tree.map(jnp.subtract, updates, state.memory)
            payloads = compress_tree(compressor, delta, key)
            mine = decode(delta)(payloads)
            memory = jax.tree.map(jnp.add, state.memory, mine)
            estimate = jax.tree.map(
                jnp.add, state.estimate, gather_mean(payloads, decode(delta), axis_name)
            )
            return estimate, memory, estimate
        sent = jax.tree.map(jnp.add, updates, state.memory) if error_feedback else updates
        payloads = compress_tree(compressor, sent, key)
        memory = state.memory
        if error_feedback:
            memory = jax.tree.map(jnp.subtract, sent, decode(sent)(payloads))
        return gather_mean(payloads, decode(sent), axis_name), memory, state.estimate

    def dense(updates, state):
        averaged = mean(updates, axis_name)
        if error_feedback == "ef21":  # the estimates start where the dense phase leaves them
            return averaged, updates, averaged
        return averaged, state.memory, state.estimate

    def update_fn(updates, state, params=None):
        del params
        # varying(): both branches typed per-worker under shard_map (a mean is "invariant").
        branch = lambda f: lambda u, s: varying(f(u, s), axis_name)
        if warmup_steps == 0:
            out, memory, estimate = branch(compressed)(updates, state)
        else:
            out, memory, estimate = cond(
                state.count < warmup_steps, branch(dense), branch(compressed), updates, state
            )
        return out, CompressedAllReduceState(state.count + 1, memory, estimate)

    return optax.GradientTransformation(init_fn, update_fn)
