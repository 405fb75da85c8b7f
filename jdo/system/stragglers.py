"""Straggler models: a worker's compute seconds perturbed per (worker, step).

Each model's ``sample(key, worker, step, seconds)`` returns the perturbed seconds as a float32
scalar. Draws come from ``fold_in(fold_in(key, worker), step)``, so a given (seed, worker, step)
always straggles the same way: under ``jit``, under ``vmap`` over workers, in a resumed run.
``worker`` and ``step`` may be traced int32 scalars. No stragglers is ``None``.

==========================  =============================================  ================
model                       seconds                                        mean
==========================  =============================================  ================
shifted_exponential(s, m)   ``c (s + X)``, ``X ~ Exponential(mean=m)``      ``c (s + m)``
lognormal(σ)                ``c exp(σ N - σ²/2)``, ``N ~ Normal(0, 1)``     ``c``
slow_worker(W, f)           ``c f`` for workers in W, else ``c``            (deterministic)
pauses(p, t)                ``c + t`` with probability p, else ``c``        ``c + p t``
==========================  =============================================  ================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jdo import checks


def draw_key(key: jax.Array, worker, step) -> jax.Array:
    """The key of one (worker, step): ``fold_in(fold_in(key, worker), step)``."""
    return jax.random.fold_in(jax.random.fold_in(key, worker), step)


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


@dataclasses.dataclass(frozen=True)
class ShiftedExponential:
    """``c * (shift + X)``, ``X ~ Exponential(mean)`` (see :func:`shifted_exponential`)."""

    shift: float
    mean: float

    def sample(self, key, worker, step, seconds) -> jax.Array:
        x = jax.random.exponential(draw_key(key, worker, step), dtype=jnp.float32)
        return _f32(seconds) * (self.shift + self.mean * x)


@dataclasses.dataclass(frozen=True)
class Lognormal:
    """``c * exp(sigma N - sigma^2 / 2)`` (see :func:`lognormal`)."""

    sigma: float

    def sample(self, key, worker, step, seconds) -> jax.Array:
        n = jax.random.normal(draw_key(key, worker, step), dtype=jnp.float32)
        return _f32(seconds) * jnp.exp(self.sigma * n - 0.5 * self.sigma**2)


@dataclasses.dataclass(frozen=True)
class SlowWorker:
    """``c * factor`` on the listed workers (see :func:`slow_worker`)."""

    workers: tuple[int, ...]
    factor: float

    def sample(self, key, worker, step, seconds) -> jax.Array:
        del key, step
        slow = jnp.any(jnp.asarray(worker) == jnp.asarray(self.workers, jnp.int32))
        return _f32(seconds) * jnp.where(slow, _f32(self.factor), _f32(1.0))


@dataclasses.dataclass(frozen=True)
class Pauses:
    """``c + seconds`` with probability ``prob`` (see :func:`pauses`)."""

    prob: float
    seconds: float

    def sample(self, key, worker, step, seconds) -> jax.Array:
        paused = jax.random.bernoulli(draw_key(key, worker, step), self.prob)
        return _f32(seconds) + jnp.where(paused, _f32(self.seconds), _f32(0.0))


Stragglers = ShiftedExponential | Lognormal | SlowWorker | Pauses


def shifted_exponential(shift: float, mean: float) -> ShiftedExponential:
    r"""Compute times :math:`c\,(\text{shift} + X)`, :math:`X \sim \text{Exp}(\text{mean})`,
    i.i.d. per (worker, step).

    The shifted exponential is the standard model of straggling compute times in distributed
    SGD (Dutta, Joshi, Ghosh, Dube & Nagpurkar 2018, "Slow and Stale Gradients Can Win the
    Race: Error-Runtime Trade-offs in Distributed SGD", AISTATS; also Lee et al. 2018,
    "Speeding Up Distributed Machine Learning Using Codes", IEEE Trans. Inf. Theory). Its mean
    is :math:`c\,(\text{shift} + \text{mean})`; ``shift=1, mean=0`` is no straggling.

    Args:
      shift: the minimum time as a multiple of the base compute time, ``>= 0``.
      mean: mean of the exponential tail (in the same multiples), ``>= 0``.
    """
    return ShiftedExponential(
        checks.non_negative("shift", shift), checks.non_negative("mean", mean)
    )


def lognormal(sigma: float) -> Lognormal:
    r"""Compute times :math:`c\,\exp(\sigma N - \sigma^2/2)`, :math:`N \sim \mathcal{N}(0, 1)`,
    i.i.d. per (worker, step): multiplicative noise with mean 1 and a heavy right tail.

    A lognormal service time is the usual model of run-time variability from many small
    multiplicative delays; its tail is what makes the slowest of many workers slow (Dean &
    Barroso 2013, "The Tail at Scale", CACM 56(2)). The :math:`-\sigma^2/2` keeps the mean at
    :math:`c`, so ``sigma`` changes the spread and not the average.

    Args:
      sigma: standard deviation of the log of the factor, ``>= 0`` (0: no straggling).
    """
    return Lognormal(checks.non_negative("sigma", sigma))


def slow_worker(workers: Sequence[int], factor: float) -> SlowWorker:
    r"""The listed workers are always ``factor`` times slower: :math:`c_i = f\,c` for
    :math:`i \in W`, else :math:`c`.

    A deterministic straggler, the worst case synchronous SGD pays for on every step (Chen,
    Pan, Monga, Bengio & Jozefowicz 2016, "Revisiting Distributed Synchronous SGD",
    arXiv:1604.00981; Tandon, Lei, Dimakis & Karampatziakis 2017, "Gradient Coding", ICML).

    Args:
      workers: worker indices (``>= 0``), e.g. ``[0]``.
      factor: slowdown, ``> 0`` (10: ten times slower; below 1: faster).
    """
    return SlowWorker(
        checks.int_sequence("workers", workers, minimum=0, allow_empty=False),
        checks.positive("factor", factor),
    )


def pauses(prob: float, seconds: float) -> Pauses:
    r"""With probability ``prob`` per (worker, step) the step takes ``seconds`` longer:
    :math:`c + t\,B`, :math:`B \sim \text{Bernoulli}(p)`.

    Models transient interruptions (garbage collection, daemons, preemption, a shared host's
    noisy neighbour) that hit one worker at a time (Dean & Barroso 2013, "The Tail at Scale",
    CACM 56(2), §"Why variability exists").

    Args:
      prob: probability of a pause per (worker, step), in ``[0, 1]``.
      seconds: length of a pause, ``>= 0``.
    """
    return Pauses(checks.probability("prob", prob), checks.non_negative("seconds", seconds))
