"""Lagrangian methods for ``min f(θ) s.t. g(θ) <= 0, h(θ) = 0``, run over all workers.

Every worker holds the same θ and its own data; primal gradients and constraint values are
averaged over the workers (one all-reduce each), so the problem solved is
``min (1/W) Σ_i f_i(θ)  s.t.  (1/W) Σ_i g_i(θ) <= 0,  (1/W) Σ_i h_i(θ) = 0`` (a constraint on
the whole data set; a constraint that needs no data is the same on every worker). Inequality
multipliers stay >= 0. ``ineq`` / ``eq`` are ``fn(params, batch) -> array or pytree`` (or
None); their sizes come from ``fn(params, None)`` unless ``num_ineq`` / ``num_eq`` are given.
With ``shared_constraints=False`` each worker's constraints hold on their own (its own data,
its own multipliers): the problem becomes ``g_i(θ) <= 0`` for every i.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import pmax, pmean
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.comm.collectives import mean, varying

ConstraintFn = Callable[[Any, Any], jax.Array]
METHODS = ("simultaneous", "alternating", "extragradient")


class LagrangianState(NamedTuple):
    params: Any
    ineq_multipliers: jax.Array | None  # λ >= 0 (None without inequality constraints)
    eq_multipliers: jax.Array | None  # μ (None without equality constraints)
    opt_state: optax.OptState
    rho: jax.Array  # penalty (augmented Lagrangian / quadratic penalty); 0 for plain GDA
    step: jax.Array


def _flat(values) -> jax.Array:
    """A constraint function's output (an array or a pytree of arrays) as one vector."""
    leaves = [jnp.ravel(v) for v in jax.tree.leaves(values)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,))


def _values(fn, params, batch, axis_name, shared):
    if fn is None:
        return jnp.zeros((0,))
    values = _flat(fn(params, batch)).astype(float)
    return pmean(values, axis_name) if shared else values


def _count(fn, params, given: int | None, name: str) -> int:
    """How many constraints ``fn`` returns: ``given``, or its shape on ``fn(params, None)``."""
    if fn is None:
        return 0
    if given is not None:
        return given
    try:
        shapes = jax.eval_shape(fn, params, None)
        return sum(int(jnp.size(jnp.zeros(x.shape))) for x in jax.tree.leaves(shapes))
    except Exception as e:
        raise checks.InvalidArgument(
            name, f"cannot be evaluated without a batch (fn(params, None) failed): pass num_{name}="
        ) from e


def _penalty(lam, mu, g, h, rho, kind):
    """The multiplier/penalty terms of the Lagrangian, safe at ρ = 0 (no 0/0: a Cooper bug)."""
    if kind == "lagrangian":
        return jnp.sum(lam * g) + jnp.sum(mu * h)
    if kind == "penalty":
        return 0.5 * rho * (jnp.sum(jnp.maximum(g, 0.0) ** 2) + jnp.sum(h**2))
    # augmented Lagrangian (Rockafellar): (1/2ρ)(max(0, λ + ρg)² − λ²) → λg as ρ → 0
    safe = jnp.where(rho > 0, rho, 1.0)
    shifted = (jnp.maximum(lam + safe * g, 0.0) ** 2 - lam**2) / (2.0 * safe)
    ineq = jnp.where(rho > 0, shifted, lam * g)
    return jnp.sum(ineq) + jnp.sum(mu * h) + 0.5 * rho * jnp.sum(h**2)


def _check(loss_fn, optimizer, ineq, eq, method, dual_lr, rho, update_every, num_ineq, num_eq):
    checks.function("loss_fn", loss_fn)
    checks.optimizer("optimizer", optimizer)
    for name, fn in (("ineq", ineq), ("eq", eq)):
        if fn is not None:
            checks.function(name, fn)
    checks.one_of("method", method, METHODS)
    if dual_lr is not None:
        checks.non_negative("dual_lr", dual_lr)
    checks.non_negative("rho", rho)
    checks.positive_int("inner_steps", update_every)
    for name, count in (("num_ineq", num_ineq), ("num_eq", num_eq)):
        if count is not None:
            checks.non_negative_int(name, count)


def _make(
    loss_fn,
    optimizer,
    ineq,
    eq,
    *,
    kind,
    method,
    dual_lr,
    rho,
    rho_growth,
    rho_max,
    update_every,
    axis_name,
    num_ineq=None,
    num_eq=None,
    shared=True,
):
    _check(loss_fn, optimizer, ineq, eq, method, dual_lr, rho, update_every, num_ineq, num_eq)

    def lagrangian(params, lam, mu, rho_t, batch, key):
        loss, metrics = loss_fn(params, batch, key)
        g = _flat(ineq(params, batch)) if ineq else jnp.zeros((0,))
        h = _flat(eq(params, batch)) if eq else jnp.zeros((0,))
        if not shared:
            return loss + _penalty(lam, mu, g, h, rho_t, kind), (loss, metrics)
        # Shared constraints act on the workers' average ḡ. With c = ∂penalty/∂g at ḡ, each
        # worker adds cᵀg_i: averaging the workers' gradients then gives exactly
        # ∇[f̄ + penalty(ḡ)] (the penalty is not linear in g, so penalty(g_i) would not).
        # varying(): typed per worker, else shard_map sums the gradient over the workers.
        g_bar = varying(jax.lax.stop_gradient(pmean(g, axis_name)), axis_name)
        h_bar = varying(jax.lax.stop_gradient(pmean(h, axis_name)), axis_name)
        cg, ch = jax.grad(_penalty, argnums=(2, 3))(lam, mu, g_bar, h_bar, rho_t, kind)
        return loss + jnp.dot(cg, g) + jnp.dot(ch, h), (loss, metrics)

    def primal_grad(params, lam, mu, rho_t, batch, key):
        grads, aux = jax.grad(lagrangian, has_aux=True)(params, lam, mu, rho_t, batch, key)
        return mean(grads, axis_name), aux

    def dual_ascent(params, lam, mu, rho_t, batch):
        g = _values(ineq, params, batch, axis_name, shared)
        h = _values(eq, params, batch, axis_name, shared)
        if kind == "lagrangian":  # gradient ascent on the multipliers
            return jnp.maximum(lam + dual_lr * g, 0.0), mu + dual_lr * h
        if kind == "augmented":  # the method of multipliers: dual step ρ (or dual_lr if given)
            step = rho_t if dual_lr is None else dual_lr
            return jnp.maximum(lam + step * g, 0.0), mu + step * h
        return lam, mu  # quadratic penalty: no multipliers

    def init(params, key):
        del key
        # None, not a zero-size array, when absent (checkpoints cannot hold empty arrays)
        n_in, n_eq = _count(ineq, params, num_ineq, "ineq"), _count(eq, params, num_eq, "eq")
        lam = jnp.zeros((n_in,)) if n_in else None  # the default float dtype
        mu = jnp.zeros((n_eq,)) if n_eq else None
        return LagrangianState(
            params,
            lam,
            mu,
            optimizer.init(params),
            jnp.asarray(float(rho)),
            jnp.zeros((), jnp.int32),
        )

    def step(state, batch, key):
        empty = jnp.zeros((0,))
        lam = empty if state.ineq_multipliers is None else state.ineq_multipliers
        mu = empty if state.eq_multipliers is None else state.eq_multipliers
        params = state.params
        if method == "extragradient":  # 1. look-ahead point, 2. step with its gradients
            grads, _ = primal_grad(params, lam, mu, state.rho, batch, key)
            u, _ = optimizer.update(grads, state.opt_state, params)
            look = optax.apply_updates(params, u)
            lam_look, mu_look = dual_ascent(params, lam, mu, state.rho, batch)
            grads, (loss, metrics) = primal_grad(look, lam_look, mu_look, state.rho, batch, key)
            u, opt_state = optimizer.update(grads, state.opt_state, params)
            new_params = optax.apply_updates(params, u)
            new_lam, new_mu = dual_ascent(look, lam, mu, state.rho, batch)
        else:
            grads, (loss, metrics) = primal_grad(params, lam, mu, state.rho, batch, key)
            u, opt_state = optimizer.update(grads, state.opt_state, params)
            new_params = optax.apply_updates(params, u)
            at = new_params if method == "alternating" else params
            new_lam, new_mu = dual_ascent(at, lam, mu, state.rho, batch)
        rho_t = state.rho
        if kind != "lagrangian":  # outer updates every `update_every` inner steps
            outer = (state.step + 1) % update_every == 0
            new_lam = jnp.where(outer, new_lam, lam)
            new_mu = jnp.where(outer, new_mu, mu)
            rho_t = jnp.where(outer, jnp.minimum(state.rho * rho_growth, rho_max), state.rho)
        g = _values(ineq, new_params, batch, axis_name, shared)
        h = _values(eq, new_params, batch, axis_name, shared)
        violation = jnp.maximum(
            jnp.max(jnp.maximum(g, 0.0), initial=0.0), jnp.max(jnp.abs(h), initial=0.0)
        )
        if not shared:  # the worst worker's constraint
            violation = pmax(violation, axis_name)
        metrics = {"loss": loss, **metrics, "violation": violation, "rho": state.rho}
        keep = lambda new_value, old: None if old is None else new_value
        new = LagrangianState(
            new_params,
            keep(new_lam, state.ineq_multipliers),
            keep(new_mu, state.eq_multipliers),
            opt_state,
            rho_t,
            state.step + 1,
        )
        return new, metrics

    return Algorithm(init, step)


@register("lagrangian")
def lagrangian(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ineq: ConstraintFn | None = None,
    eq: ConstraintFn | None = None,
    dual_lr: float = 0.01,
    method: str = "simultaneous",
    num_ineq: int | None = None,
    num_eq: int | None = None,
    shared_constraints: bool = True,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Gradient descent–ascent on :math:`L(θ, λ, μ) = f(θ) + λ^\top g(θ) + μ^\top h(θ)`:
    ``optimizer`` descends in θ, :math:`λ \leftarrow \max(0, λ + η g)`,
    :math:`μ \leftarrow μ + η h` with ``dual_lr`` η. ``method``: ``"simultaneous"`` (duals
    from the old θ), ``"alternating"`` (from the new θ) or ``"extragradient"`` (Korpelevich
    1976: a look-ahead step, then the step with the look-ahead gradients)."""
    return _make(
        loss_fn,
        optimizer,
        ineq,
        eq,
        kind="lagrangian",
        method=method,
        dual_lr=dual_lr,
        rho=0.0,
        rho_growth=1.0,
        rho_max=0.0,
        update_every=1,
        axis_name=axis_name,
        num_ineq=num_ineq,
        num_eq=num_eq,
        shared=shared_constraints,
    )


@register("augmented_lagrangian")
def augmented_lagrangian(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ineq: ConstraintFn | None = None,
    eq: ConstraintFn | None = None,
    rho: float = 1.0,
    rho_growth: float = 1.0,
    rho_max: float = 1e4,
    inner_steps: int = 100,
    dual_lr: float | None = None,
    method: str = "simultaneous",
    num_ineq: int | None = None,
    num_eq: int | None = None,
    shared_constraints: bool = True,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""The method of multipliers (Hestenes 1969; Powell 1969; Rockafellar 1973): minimise

    .. math:: L_ρ = f + \tfrac{1}{2ρ}\textstyle\sum_j\big(\max(0, λ_j + ρ g_j)^2 - λ_j^2\big)
              + μ^\top h + \tfrac{ρ}{2}\|h\|^2

    with ``inner_steps`` steps of ``optimizer``, then :math:`λ \leftarrow \max(0, λ + ρ g)`,
    :math:`μ \leftarrow μ + ρ h` and :math:`ρ \leftarrow \min(ρ·\text{rho\_growth},
    \text{rho\_max})`. ``dual_lr`` replaces ρ as the multipliers' step if given. ``rho=0``
    (which needs ``dual_lr``) is the plain Lagrangian with periodic dual steps, computed
    without a 0/0 (a NaN there is an open Cooper bug)."""
    checks.non_negative("rho", rho)
    if rho == 0 and not dual_lr:
        raise checks.InvalidArgument(
            "dual_lr",
            "must be > 0 when rho=0 (rho=0 leaves the multipliers still; or use lagrangian)",
        )
    checks.number("rho_growth", rho_growth, low=1)
    checks.non_negative("rho_max", rho_max)
    return _make(
        loss_fn,
        optimizer,
        ineq,
        eq,
        kind="augmented",
        method=method,
        dual_lr=dual_lr,
        rho=rho,
        rho_growth=rho_growth,
        rho_max=rho_max,
        update_every=inner_steps,
        axis_name=axis_name,
        num_ineq=num_ineq,
        num_eq=num_eq,
        shared=shared_constraints,
    )


@register("quadratic_penalty")
def quadratic_penalty(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    ineq: ConstraintFn | None = None,
    eq: ConstraintFn | None = None,
    rho: float = 1.0,
    rho_growth: float = 2.0,
    rho_max: float = 1e6,
    inner_steps: int = 100,
    num_ineq: int | None = None,
    num_eq: int | None = None,
    shared_constraints: bool = True,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Quadratic penalty: minimise :math:`f + \tfrac{ρ}{2}(\|\max(0, g)\|^2 + \|h\|^2)`,
    growing ρ by ``rho_growth`` every ``inner_steps`` steps (no multipliers)."""
    checks.number("rho_growth", rho_growth, low=1)
    checks.non_negative("rho_max", rho_max)
    return _make(
        loss_fn,
        optimizer,
        ineq,
        eq,
        kind="penalty",
        method="simultaneous",
        dual_lr=0.0,
        rho=rho,
        rho_growth=rho_growth,
        rho_max=rho_max,
        update_every=inner_steps,
        axis_name=axis_name,
        num_ineq=num_ineq,
        num_eq=num_eq,
        shared=shared_constraints,
    )
