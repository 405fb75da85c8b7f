"""Compute models: the seconds one worker's step takes before stragglers and device speeds.

A model turns a :class:`StepProfile` (what jdo knows of the compiled per-worker step: its
measured wall time here, XLA's FLOP count) into base seconds ``c``. The cluster divides ``c``
by the worker's device speed; a straggler model (``jdo.system.stragglers``) then perturbs it
per (worker, step). Host-side: plain floats, no jit.

===========  ======================================  ==========================
model        base seconds ``c``                      needs
===========  ======================================  ==========================
fixed        ``seconds``                             nothing
measured     ``profile.seconds / speed``             ``StepProfile.seconds``
flops        ``profile.flops / (peak * efficiency)`` ``StepProfile.flops``
===========  ======================================  ==========================
"""

from __future__ import annotations

import dataclasses

from jdo import checks

NEEDS = ("seconds", "flops")


@dataclasses.dataclass(frozen=True)
class StepProfile:
    """What is known of one worker's compiled step.

    Attributes:
      seconds: measured wall seconds of one call of the compiled per-worker step on this
        machine (None: not measured).
      flops: floating-point operations of one worker's step from XLA's cost analysis
        (``compiled.cost_analysis()["flops"]``; None: not analysed).
    """

    seconds: float | None = None
    flops: float | None = None


def _field(profile: StepProfile, name: str, model: str) -> float:
    value = getattr(profile, name, None)
    if value is None:
        raise checks.InvalidArgument(
            "compute", f"{model} needs the step's {name} (StepProfile.{name}), which is missing"
        )
    return float(value)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """``c = seconds`` for every step (see :func:`fixed`)."""

    seconds: float
    needs = None

    def base_seconds(self, profile: StepProfile | None = None) -> float:
        del profile
        return self.seconds


@dataclasses.dataclass(frozen=True)
class Measured:
    """``c = profile.seconds / speed`` (see :func:`measured`)."""

    speed: float
    needs = "seconds"

    def base_seconds(self, profile: StepProfile) -> float:
        return _field(profile, "seconds", "compute=measured") / self.speed


@dataclasses.dataclass(frozen=True)
class Flops:
    """``c = profile.flops / (peak_flops * efficiency)`` (see :func:`flops`)."""

    peak_flops: float
    efficiency: float
    needs = "flops"

    def base_seconds(self, profile: StepProfile) -> float:
        return _field(profile, "flops", "compute=flops") / (self.peak_flops * self.efficiency)


ComputeModel = Fixed | Measured | Flops


def fixed(seconds: float) -> Fixed:
    r"""Every step of every worker computes for the same time: :math:`c = \text{seconds}`.

    The compute term of the α–β–γ cost model with the step's cost given directly (Hockney 1994,
    "The communication challenge for MPP: Intel Paragon and Meiko CS-2", Parallel Computing 20).

    Args:
      seconds: compute seconds of one step, ``>= 0``.
    """
    return Fixed(checks.non_negative("seconds", seconds))


def measured(speed: float = 1.0) -> Measured:
    r"""The compiled per-worker step timed on this machine, scaled: :math:`c = t_{here}/s`.

    ``speed`` is the simulated device's speed relative to this machine (2.0: twice as fast).
    Measuring the real step and scaling it is how trace-driven simulators obtain compute
    times (e.g. SimAI, Wang et al. 2025, "SimAI: Unifying Architecture Design and Performance
    Tuning for Large-Scale LLM Training with Scalability and Precision", NSDI).

    Args:
      speed: ratio of the simulated device's speed to this machine's, ``> 0``.
    """
    return Measured(checks.positive("speed", speed))


def flops(peak_flops: float, efficiency: float = 0.5) -> Flops:
    r"""Compute time from the step's FLOP count: :math:`c = F / (\text{peak} \cdot \eta)`.

    ``F`` is XLA's cost analysis of one worker's compiled step; ``peak`` the device's peak
    FLOP/s from its datasheet; ``η`` the fraction of peak a real step achieves (the roofline
    model's compute-bound ceiling scaled by an achieved efficiency: Williams, Waterman &
    Patterson 2009, "Roofline: an insightful visual performance model for multicore
    architectures", CACM 52(4)).

    Args:
      peak_flops: the device's peak FLOP/s, ``> 0``.
      efficiency: achieved fraction of the peak, in ``(0, 1]``.
    """
    return Flops(
        checks.positive("peak_flops", peak_flops),
        checks.probability("efficiency", efficiency, allow_zero=False),
    )
