"""How the vmap lifting evaluates the workers' own compute: all at once, in chunks, or one by one.

A per-worker step mixes two kinds of work: the worker's own compute (a gradient: the model's
forward and backward pass, most of the time and all of the activation memory) and the
communication (collectives over the named axis ``"workers"``, cheap elementwise updates of
``[W, d]`` state). Under ``jax.vmap`` both are evaluated for all W workers at once, so the
activations of all W workers are alive together, and a convolution's gradient becomes one
grouped convolution that is ~5x slower on CPU than W ordinary ones.

Collectives cannot be split into chunks (``lax.map`` runs its chunks one after the other,
and a ``psum`` inside one chunk would see that chunk only). So the split is explicit: the
collective-free compute is marked with :func:`per_worker_compute`, and only that part is
mapped differently; everything else, collectives included, stays under the workers' ``vmap``
and sees all W workers. Under a :class:`WorkerMap` that asks for it, the marked function gets
a custom batching rule (``jax.custom_batching.custom_vmap``) that evaluates it with
``jax.lax.map``:

- ``map="vmap", chunk=c``: ``lax.map(..., batch_size=c)``: c workers at a time (a ``vmap``
  inside a sequential loop), so the compute's temporary memory is that of c workers, not W
  (the ``[W, d]`` state, gradients and optimizer temporaries remain: they are the state);
- ``map="scan"``: worker by worker (``lax.map`` without ``batch_size``): what a grouped
  convolution needs on CPU;
- ``map="auto"``: ``scan`` when the compute contains an XLA convolution
  (``conv_general_dilated``) and the backend is the CPU (measured:
  ``experiments/bench/results/worker_map.json``), else ``vmap`` (with ``chunk`` when given).
  jdo's CNN computes its convolutions as matmuls on the CPU (``jdo.models.conv``), fast under
  ``vmap``, so ``auto`` vmaps it.

Results equal plain ``vmap`` up to float reassociation. The lifting (``jdo.lift(fn, "vmap",
chunk=..., map=...)``) opens the scope; without one, or with plain ``vmap``, a marked function
is called as is (no custom rule: nothing changes for the shard_map lifting or for ``vmap``).
The marked function is not differentiable through the custom rule (mark the gradient, not the
loss). Logical clients independent of how they are evaluated follow DrJAX (Rush et al. 2024,
"DrJAX: Scalable and Differentiable MapReduce Primitives in JAX") and FedJAX's
``for_each_client`` (Ro et al. 2021).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable

import jax

from jdo import checks

MAPS = ("vmap", "scan", "auto")
CONV_PRIMITIVES = ("conv_general_dilated",)


class NoPerWorkerCompute(ValueError):
    """A chunked or sequential map was asked of a step that marks no per-worker compute."""


@dataclasses.dataclass(frozen=True)
class WorkerMap:
    """How the marked per-worker compute is evaluated over the workers (see the module).

    Attributes:
      map: ``"vmap"`` (all at once, or ``chunk`` at a time), ``"scan"`` (one at a time) or
        ``"auto"`` (``scan`` for convolutions on CPU, else ``vmap``).
      chunk: workers evaluated together under ``map="vmap"`` (None: all W).
    """

    map: str = "vmap"
    chunk: int | None = None

    def __post_init__(self):
        checks.one_of("map", self.map, MAPS)
        if self.chunk is not None:
            checks.positive_int("chunk", self.chunk)
        if self.map == "scan" and self.chunk not in (None, 1):
            raise checks.InvalidArgument(
                "chunk",
                f"map=scan evaluates one worker at a time; chunk={self.chunk} asks for "
                f"{self.chunk} at a time with map=vmap: set one of them",
            )

    @property
    def plain(self) -> bool:
        """All workers at once: a plain ``vmap``, no custom rule."""
        return self.map == "vmap" and self.chunk is None


@dataclasses.dataclass
class _Scope:
    policy: WorkerMap
    marked: int = 0  # marked functions traced inside the scope


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "jdo_worker_map", default=None
)


@contextlib.contextmanager
def worker_map(policy: WorkerMap):
    """Marked functions traced inside are evaluated as ``policy`` says; yields a scope whose
    ``marked`` counts them."""
    scope = _Scope(policy)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def mapped_lift(vmapped: Callable, policy: WorkerMap) -> Callable:
    """``vmapped`` (a ``jax.vmap`` over the workers) traced inside a ``policy`` scope; raises
    :class:`NoPerWorkerCompute` if the step marks nothing to map."""

    @functools.wraps(vmapped)
    def lifted(*args):
        with worker_map(policy) as scope:
            out = vmapped(*args)
        if not scope.marked:
            raise NoPerWorkerCompute(
                f"lifting.map={policy.map}, lifting.chunk={policy.chunk}: the step marks no "
                "per-worker compute to map (jdo.worker_map.per_worker_compute; allreduce_sgd, "
                "the transform-chain algorithms, dpsgd, gradient_tracking and push_sum do); "
                "use lifting.map=vmap without chunk for this algorithm"
            )
        return out

    return lifted


def per_worker_compute(fn: Callable) -> Callable:
    """Marks ``fn`` as one worker's own compute: pure, no collectives (e.g.
    ``jax.value_and_grad(loss_fn)``). Under a non-plain :class:`WorkerMap` scope it is
    evaluated over the workers with ``lax.map`` (chunked or sequential); otherwise it is
    ``fn`` itself."""

    @functools.wraps(fn)
    def marked(*args):
        scope = _SCOPE.get()
        if scope is None or scope.policy.plain:
            return fn(*args)
        scope.marked += 1
        one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype), args)
        collectives = named_axis_ops(fn, *one)
        if collectives:  # lax.map's chunks would each see themselves only
            raise ValueError(
                f"{getattr(fn, '__name__', fn)} is marked per_worker_compute but calls "
                f"collectives ({', '.join(sorted(set(collectives)))}); only collective-free "
                "compute can be chunked or mapped one worker at a time"
            )
        if scope.policy.map == "auto" and scope.policy.chunk is None:
            if batch_size_for(scope.policy, fn, one, 2) == 2:
                return fn(*args)  # auto resolved to all at once: the plain vmap, no rule
        return _mapped(fn, scope.policy)(*args)

    return marked


def _primitives(fn: Callable, *args):
    """Every equation of ``fn(*args)``'s jaxpr, at any depth."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def has_convolution(fn: Callable, *args) -> bool:
    """Whether ``fn(*args)``'s jaxpr holds a convolution (at any depth)."""
    return any(e.primitive.name in CONV_PRIMITIVES for e in _primitives(fn, *args))


def named_axis_ops(fn: Callable, *args) -> list[str]:
    """The collectives (primitives over a named axis) in ``fn(*args)``'s jaxpr."""

    def named(e) -> bool:
        axes = e.params.get("axes", e.params.get("axis_name", ()))
        axes = axes if isinstance(axes, tuple | list) else (axes,)
        return any(isinstance(a, str) for a in axes)  # reductions name axes by number

    return [e.primitive.name for e in _primitives(fn, *args) if named(e)]


def batch_size_for(policy: WorkerMap, fn: Callable, one_worker_args, workers: int) -> int | None:
    """How many of the ``workers`` are evaluated together under ``policy`` (None: one at a
    time, sequentially; ``workers``: all at once), ``auto`` resolved by the compute's
    content and the backend."""
    if policy.map == "scan":
        return None
    if policy.map == "auto" and jax.default_backend() == "cpu":
        if has_convolution(fn, *one_worker_args):
            return None
    return workers if policy.chunk is None else min(policy.chunk, workers)


def _mapped(fn: Callable, policy: WorkerMap) -> Callable:
    """``fn`` with a batching rule that maps it with ``lax.map`` as ``policy`` says."""
    custom = jax.custom_batching.custom_vmap(fn)

    @custom.def_vmap
    def rule(axis_size, in_batched, *args):
        leaves, treedef = jax.tree.flatten(args)
        flags = jax.tree.leaves(in_batched)
        stacked = [x for x, b in zip(leaves, flags, strict=True) if b]

        def one(rows):
            it = iter(rows)
            full = [next(it) if b else x for x, b in zip(leaves, flags, strict=True)]
            return fn(*treedef.unflatten(full))

        first = [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for x in stacked]
        size = batch_size_for(policy, one, (first,), axis_size)
        if size == axis_size:
            out = jax.vmap(one)(stacked)
        else:
            out = jax.lax.map(one, stacked, batch_size=size)
        return out, jax.tree.map(lambda _: True, out)

    return custom
