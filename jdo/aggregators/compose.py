"""Aggregators as values: a rule or pre-aggregation with its hyperparameters bound, and
compositions "pre-aggregations, then a rule" (``compose(aggregator("nearest_neighbor_mixing",
f=2), aggregator("centered_clipping", tau=1.0))``).

An :class:`Aggregator` is a frozen, hashable callable ``aggregate(xs, *, key=None,
center=None)``; it says whether it draws (``needs_key``: bucketing) and whether it takes the
previous aggregate (``uses_center``: centered clipping last), so
:func:`jdo.transforms.robust_all_reduce` knows what to keep in its state. The plain functions of
:mod:`jdo.aggregators` stay the reference API; this module only binds and chains them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jdo import checks
from jdo.aggregators import pre, rules

RULES: dict[str, Callable] = {
    "mean": rules.mean,
    "coordinate_median": rules.coordinate_median,
    "trimmed_mean": rules.trimmed_mean,
    "krum": rules.krum,
    "multi_krum": rules.multi_krum,
    "geometric_median": rules.geometric_median,
    "centered_clipping": rules.centered_clipping,
}
PRE_AGGREGATIONS: dict[str, Callable] = {
    "nearest_neighbor_mixing": pre.nearest_neighbor_mixing,
    "bucketing": pre.bucketing,
}
RUNTIME_ARGUMENTS = ("x", "key", "center")  # given at each call, never bound

# Checks of the hyperparameters that need no W (those that do run when the rule is traced).
PARAM_CHECKS: dict[str, Callable] = {
    "f": checks.non_negative_int,
    "m": checks.positive_int,
    "s": checks.positive_int,
    "tau": checks.positive,
    "eps": checks.positive,
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One rule or pre-aggregation by name, with its bound hyperparameters (sorted items)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def fn(self) -> Callable:
        return {**RULES, **PRE_AGGREGATIONS}[self.name]

    @property
    def is_rule(self) -> bool:
        return self.name in RULES

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.params)})"


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """Pre-aggregations then (optionally) one rule, applied in order to a stacked ``[W, ...]``
    pytree. Make one with :func:`aggregator` and :func:`compose`."""

    stages: tuple[Stage, ...]

    @property
    def is_rule(self) -> bool:
        """Whether it ends in a rule (the result loses the leading axis) rather than a
        pre-aggregation (the result is stacked)."""
        return self.stages[-1].is_rule

    @property
    def needs_key(self) -> bool:
        return any(stage.name == "bucketing" for stage in self.stages)

    @property
    def uses_center(self) -> bool:
        return self.stages[-1].name == "centered_clipping"

    def __str__(self) -> str:
        return " -> ".join(map(str, self.stages))

    def __call__(self, xs, *, key: jax.Array | None = None, center=None):
        """Aggregates ``xs`` (stacked ``[W, ...]``). ``key`` (every worker the same) is given to
        each bucketing stage; ``center`` to a final centered clipping (None: zero)."""
        if self.needs_key and key is None:
            raise checks.InvalidArgument("key", f"is needed by {self} (bucketing draws)")
        if center is not None and not self.uses_center:
            raise checks.InvalidArgument(
                "center", f"is only taken by centered_clipping, not {self}"
            )
        for stage in self.stages:
            runtime = {"key": key} if stage.name == "bucketing" else {}
            if stage.name == "centered_clipping":
                runtime = {"center": center}
            xs = stage.fn(xs, **dict(stage.params), **runtime)
        return xs

    def check(self, num_workers: int, byzantine: int = 0) -> Aggregator:
        """Raises :class:`jdo.checks.InvalidArgument` (naming the hyperparameter) unless every
        stage accepts the inputs it gets from ``num_workers`` workers (``f`` against ``W``,
        ``m`` and ``s`` at most ``W``, after bucketing the number of buckets), and, with
        ``byzantine`` Byzantine workers, unless they are a minority (every stage but the plain
        mean, the non-robust baseline, assumes an honest majority). Traces only shapes.
        Returns ``self``."""
        w = checks.positive_int("num_workers", num_workers)
        f = checks.non_negative_int("byzantine", byzantine)
        robust = [str(stage) for stage in self.stages if stage.name != "mean"]
        if robust and 2 * f >= w:
            raise checks.InvalidArgument(
                "byzantine",
                f"must be fewer than half the workers for {robust[0]}, which assumes an honest "
                f"majority (2f < W): got {f} Byzantine of W = {w}",
            )
        key = jax.random.key(0) if self.needs_key else None
        jax.eval_shape(lambda xs: self(xs, key=key), jax.ShapeDtypeStruct((w, 1), jnp.float32))
        return self


def aggregator(name: str, **params) -> Aggregator:
    """The rule or pre-aggregation ``name`` (one of :data:`RULES`, :data:`PRE_AGGREGATIONS`)
    with ``params`` bound: ``aggregator("krum", f=2)``, ``aggregator("centered_clipping",
    tau=1.0, iters=3)``, ``aggregator("bucketing", s=2)``. Checks the names and the
    hyperparameters that need no ``W`` here; :meth:`Aggregator.check` checks the rest."""
    checks.one_of("aggregator", name, (*RULES, *PRE_AGGREGATIONS))
    fn = {**RULES, **PRE_AGGREGATIONS}[name]
    signature = inspect.signature(fn)
    bindable = [p for p in signature.parameters if p not in RUNTIME_ARGUMENTS]
    for key in params:
        if key not in bindable:
            allowed = ", ".join(bindable) or "nothing"
            raise checks.InvalidArgument(key, f"is not a parameter of {name} (it takes {allowed})")
    missing = [
        p
        for p in bindable
        if signature.parameters[p].default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise checks.InvalidArgument(missing[0], f"is required by {name}")
    for key, value in params.items():
        if key in PARAM_CHECKS:
            PARAM_CHECKS[key](key, value)
        elif key == "iters":
            checks.integer(key, value, minimum=1 if name == "centered_clipping" else 0)
    return Aggregator((Stage(name, tuple(sorted(params.items()))),))


def compose(*aggregators: Aggregator) -> Aggregator:
    """The aggregators applied in order: pre-aggregations first, at most one rule, last.
    ``compose(aggregator("bucketing", s=2), aggregator("krum", f=1))`` is Krum on bucket means;
    ``compose(aggregator("nearest_neighbor_mixing", f=2), aggregator("centered_clipping",
    tau=1.0))`` is ByzFL's NNM + CC."""
    if not aggregators:
        raise checks.InvalidArgument("aggregators", "must name at least one aggregator")
    for i, agg in enumerate(aggregators):
        if not isinstance(agg, Aggregator):
            raise checks.WrongType(
                f"aggregators[{i}]",
                f"must be a jdo.aggregators.Aggregator (aggregator(name, ...)), "
                f"got {type(agg).__name__}",
            )
    stages = tuple(stage for agg in aggregators for stage in agg.stages)
    for stage in stages[:-1]:
        if stage.is_rule:
            raise checks.InvalidArgument(
                "aggregators",
                f"must put the rule last: {stage} removes the worker axis, nothing can follow it",
            )
    return Aggregator(stages)


def pipeline(stages: Sequence[Mapping[str, Any]]) -> Aggregator:
    """:func:`compose` from plain data (what a config file holds): ``pipeline([{"name":
    "nearest_neighbor_mixing", "f": 1}, {"name": "centered_clipping", "tau": 1.0}])`` is
    ``compose(aggregator("nearest_neighbor_mixing", f=1), aggregator("centered_clipping",
    tau=1.0))``."""
    made = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or "name" not in stage:
            raise checks.WrongType(f"stages[{i}]", f"must be a mapping with a name, got {stage!r}")
        params = {k: v for k, v in stage.items() if k != "name"}
        made.append(aggregator(stage["name"], **params))
    return compose(*made)
