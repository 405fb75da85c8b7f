"""Consensus ADMM (all-reduce) and decentralized ADMM (neighbours only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jdo import checks
from jdo._axis import WORKERS
from jdo._logical import axis_index, axis_size, psum
from jdo.algorithms.base import Algorithm, LossFn, register
from jdo.comm.collectives import mean, varying
from jdo.comm.gossip import neighbour_sum
from jdo.constrained import prox as proxes
from jdo.topology import Topology, check_topology

# solve(loss_fn, x0, v, rho, batch, key) -> argmin_x loss_fn(x, batch) + (rho/2)||x − v||²
LocalSolver = Callable[..., Any]


def newton_solver() -> LocalSolver:
    """One Newton step on ``f_i(x) + (ρ/2)||x − v||²`` with the exact Hessian (on the
    flattened params): the exact minimiser when ``f_i`` is quadratic (least squares), a
    damped-free Newton step otherwise. For models of up to a few thousand parameters."""

    def solve(loss_fn, x0, v, rho, batch, key):
        flat, unravel = ravel_pytree(x0)
        target, _ = ravel_pytree(v)

        def objective(theta):
            return loss_fn(unravel(theta), batch, key)[0] + 0.5 * rho * jnp.sum(
                (theta - target) ** 2
            )

        grad = jax.grad(objective)(flat)
        hess = jax.hessian(objective)(flat)
        return unravel(flat - jnp.linalg.solve(hess, grad))

    return solve


def gradient_solver(optimizer: optax.GradientTransformation, steps: int) -> LocalSolver:
    """``steps`` optax steps on ``f_i(x) + (ρ/2)||x − v||²`` from the current ``x`` (warm
    start), for any differentiable loss."""

    def solve(loss_fn, x0, v, rho, batch, key):
        def objective(x):
            prox_term = sum(
                jnp.sum((a - b) ** 2)
                for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(v), strict=True)
            )
            return loss_fn(x, batch, key)[0] + 0.5 * rho * prox_term

        def body(_, carry):
            x, s = carry
            u, s = optimizer.update(jax.grad(objective)(x), s, x)
            return optax.apply_updates(x, u), s

        return jax.lax.fori_loop(0, steps, body, (x0, optimizer.init(x0)))[0]

    return solve


NEWTON_MAX_PARAMS = 4096


def _local_solver(solver, optimizer, inner_steps, name):
    """(solve, check): ``check(params)`` refuses a Newton solve on too many parameters."""
    if optimizer is not None:
        checks.optimizer("optimizer", optimizer)
    checks.positive_int("inner_steps", inner_steps)
    if callable(solver):
        return solver, lambda params: None
    checks.one_of("solver", solver, ("auto", "newton", "gradient"))
    if solver == "gradient" and optimizer is None:
        raise checks.InvalidArgument("optimizer", f"is required by {name} with solver='gradient'")
    newton, gradient = (
        newton_solver(),
        (gradient_solver(optimizer, inner_steps) if optimizer is not None else None),
    )

    def size(params):
        return sum(x.size for x in jax.tree.leaves(params))

    def solve(loss_fn, x0, v, rho, batch, key):
        use_newton = solver == "newton" or (solver == "auto" and size(x0) <= NEWTON_MAX_PARAMS)
        return (newton if use_newton else gradient)(loss_fn, x0, v, rho, batch, key)

    def check(params):
        n = size(params)
        if n > NEWTON_MAX_PARAMS and (solver == "newton" or optimizer is None):
            raise checks.InvalidArgument(
                "solver",
                f"cannot be newton here: the Newton x-update needs the Hessian of {n} "
                f"parameters (at most {NEWTON_MAX_PARAMS}); use solver=gradient with an optimizer",
            )

    return solve, check


class ADMMState(NamedTuple):
    x: Any  # this worker's x_i
    u: Any  # its scaled dual u_i
    z: Any  # the consensus variable (the same on every worker)
    rho: jax.Array  # penalty (f32; changes with residual balancing)
    step: jax.Array


def _sq(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree))


def _size(tree) -> int:
    return sum(a.size for a in jax.tree.leaves(tree))


def balanced_penalty(rho, primal, dual, mu: float, tau: float):
    """Residual balancing (Boyd et al. 2011, §3.4.1): ``rho · tau`` when the primal residual
    exceeds ``mu`` times the dual one, ``rho / tau`` in the opposite case, else ``rho``."""
    return jnp.where(primal > mu * dual, rho * tau, jnp.where(dual > mu * primal, rho / tau, rho))


@register("consensus_admm")
def consensus_admm(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None = None,
    *,
    rho: float = 1.0,
    alpha: float = 1.0,
    regularizer: Callable | None = None,
    solver: str | LocalSolver = "auto",
    inner_steps: int = 50,
    residual_balancing: bool = False,
    mu: float = 10.0,
    tau: float = 2.0,
    eps_abs: float = 1e-8,
    eps_rel: float = 1e-6,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Global consensus ADMM (Boyd et al. 2011, "Distributed Optimization and Statistical
    Learning via the ADMM", §7.1; scaled form) for :math:`\min \sum_i f_i(x) + r(x)`:

    .. math:: x_i \leftarrow \arg\min_x f_i(x) + \tfrac{\rho}{2}\|x - z + u_i\|^2, \quad
              \hat x_i = \alpha x_i + (1-\alpha) z, \\
              z \leftarrow \mathrm{prox}_{r/(W\rho)}\big(\tfrac1W
              \textstyle\sum_i \hat x_i + u_i\big), \quad u_i \leftarrow u_i + \hat x_i - z.

    ``f_i`` is ``loss_fn`` on the worker's batch (use its whole local data:
    ``trainer.batch_size=null``). The x-update is ``solver``: ``"newton"`` (exact for quadratic
    losses; models of up to 4096 parameters), ``"gradient"`` (``inner_steps`` steps of
    ``optimizer``), ``"auto"`` (Newton when the model is that small, else gradient), or a
    callable ``solve(loss_fn, x0, v, rho, batch, key)``.
    ``alpha`` in (0, 2) over-relaxes (1.5–1.8 often faster). ``regularizer`` is a prox from
    :mod:`jdo.constrained.prox` (l1, l2, box, simplex). ``residual_balancing`` (§3.4.1)
    multiplies ρ by ``tau`` when the primal residual exceeds ``mu`` times the dual one, and
    divides it in the opposite case, rescaling u. Metrics: primal and dual residuals
    :math:`r = (\sum_i\|x_i - z\|^2)^{1/2}`, :math:`s = \rho\sqrt W\|z - z^-\|`, and
    ``converged`` by the §3.3 stopping rule with ``eps_abs``/``eps_rel``. ``params`` is z.
    """
    checks.function("loss_fn", loss_fn)
    checks.positive("rho", rho)
    checks.number("alpha", alpha, low=0, high=2, low_open=True, high_open=True)
    if regularizer is not None:
        checks.function("regularizer", regularizer)
    for name, value in (("mu", mu), ("tau", tau)):
        checks.positive(name, value)
    for name, value in (("eps_abs", eps_abs), ("eps_rel", eps_rel)):
        checks.non_negative(name, value)
    solve, check = _local_solver(solver, optimizer, inner_steps, "consensus_admm")
    prox = regularizer or proxes.none()

    def init(params, key):
        del key
        check(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ADMMState(
            params, zeros, params, jnp.asarray(rho, jnp.float32), jnp.zeros((), jnp.int32)
        )

    def step(state, batch, key):
        n = axis_size(axis_name)
        rho_t = state.rho
        # 1. local x-update
        v = jax.tree.map(jnp.subtract, state.z, state.u)
        x = solve(loss_fn, state.x, v, rho_t, batch, key)
        # 2. over-relaxation and the consensus z-update (one all-reduce)
        x_hat = jax.tree.map(lambda a, z: alpha * a + (1 - alpha) * z, x, state.z)
        averaged = mean(jax.tree.map(jnp.add, x_hat, state.u), axis_name)
        z = proxes.tree(prox, averaged, 1.0 / (n * rho_t))
        # 3. dual update
        u = jax.tree.map(lambda a, b, c: a + b - c, state.u, x_hat, z)
        # 4. residuals and the stopping rule (Boyd §3.3, §7.1)
        r = jnp.sqrt(psum(_sq(jax.tree.map(jnp.subtract, x, z)), axis_name))
        s = rho_t * jnp.sqrt(n) * jnp.sqrt(_sq(jax.tree.map(jnp.subtract, z, state.z)))
        dim = _size(x)
        eps_pri = jnp.sqrt(n * dim) * eps_abs + eps_rel * jnp.maximum(
            jnp.sqrt(psum(_sq(x), axis_name)), jnp.sqrt(n * _sq(z))
        )
        eps_dual = jnp.sqrt(n * dim) * eps_abs + eps_rel * rho_t * jnp.sqrt(psum(_sq(u), axis_name))
        # 5. residual balancing (Boyd §3.4.1): the scaled dual u = y/ρ is rescaled with ρ
        new_rho = rho_t
        if residual_balancing:
            new_rho = balanced_penalty(rho_t, r, s, mu, tau)
            u = jax.tree.map(lambda a: a * (rho_t / new_rho), u)
        loss, metrics = loss_fn(z, batch, key)
        metrics = {
            "loss": loss,
            **metrics,
            "primal_residual": r,
            "dual_residual": s,
            "rho": rho_t,
            "converged": ((r <= eps_pri) & (s <= eps_dual)).astype(jnp.float32),
        }
        new = ADMMState(x, u, z, new_rho, state.step + 1)
        return varying(new, axis_name), metrics

    return Algorithm(init, step, params=lambda s: s.z)


class DecentralizedADMMState(NamedTuple):
    x: Any  # x_i^k
    dual: Any  # α_i^{k-1}: the dual update that x^k owes is made at the start of step k
    step: jax.Array
    c: Any = ()  # residual balancing: the penalty of the last x-update (else ())
    previous: Any = ()  # residual balancing: x_i^{k-1} (else ())


@register("decentralized_admm")
def decentralized_admm(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation | None,
    topology: Topology,
    *,
    c: float = 1.0,
    solver: str | LocalSolver = "auto",
    inner_steps: int = 50,
    residual_balancing: bool = False,
    mu: float = 10.0,
    tau: float = 2.0,
    axis_name: str = WORKERS,
) -> Algorithm:
    r"""Decentralized consensus ADMM (Shi, Ling, Yuan, Wu & Yin 2014, "On the Linear
    Convergence of the ADMM in Decentralized Consensus Optimization"): only neighbours
    :math:`N_i` of the topology talk, no all-reduce. With :math:`d_i = |N_i|`:

    .. math:: x_i \leftarrow \arg\min_x f_i(x) + \alpha_i^\top x
              + c\textstyle\sum_{j\in N_i}\|x - \tfrac{x_i + x_j}{2}\|^2, \qquad
              \alpha_i \leftarrow \alpha_i + c\textstyle\sum_{j\in N_i}(x_i - x_j).

    The x-update is a prox step with :math:`\rho_i = 2 c\, d_i`; ``solver`` as in
    :func:`consensus_admm`. Each step sends ONE neighbour exchange of x (the topology's
    ppermutes): the dual update of :math:`x^{k+1}` needs :math:`\sum_{j\in N_i} x_j^{k+1}`,
    which is the sum the next x-update needs too, so it is made at the start of the next
    step (``state.dual`` holds :math:`\alpha^{k-1}` beside :math:`x^k`; the x iterates are
    the paper's). Converges to the minimiser of :math:`\sum_i f_i` for convex f_i.

    ``residual_balancing`` adapts c as :func:`consensus_admm` adapts ρ (Boyd et al. 2011,
    §3.4.1, :func:`balanced_penalty`) from the primal residual
    :math:`r^k = \|Lx^k\|` (the constraint's: :math:`(Lx)_i = d_i x_i - \sum_{j\in N_i}
    x_j`, from the step's exchange) and the dual one :math:`s^k = c\,\|D(x^k - x^{k-1})\|`,
    both over all workers (one all-reduce of two scalars per step, the only one); the dual
    :math:`\alpha` is unscaled, so it keeps its value when c changes. Metrics ``rho`` (c),
    ``primal_residual``, ``dual_residual``.
    """
    checks.function("loss_fn", loss_fn)
    checks.positive("c", c)
    for name, value in (("mu", mu), ("tau", tau)):
        checks.positive(name, value)
    solve, check = _local_solver(solver, optimizer, inner_steps, "decentralized_admm")
    check_topology("topology", topology)
    if topology.period != 1:
        raise checks.InvalidArgument("topology", f"must be static, got {topology!r}")
    w = topology.mixing_matrix()
    adjacency = (w > 0) & ~np.eye(topology.n, dtype=bool)  # what neighbour_sum sums over
    if not np.array_equal(adjacency, adjacency.T):
        raise checks.InvalidArgument("topology", f"must be undirected, got {topology!r}")
    degree = adjacency.sum(axis=1).tolist()
    if topology.n > 1 and min(degree) == 0:
        raise checks.InvalidArgument(
            "topology", f"must give every worker a neighbour; a worker of {topology!r} has none"
        )

    def init(params, key):
        del key
        check(params)
        zeros, step0 = jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32)
        if not residual_balancing:
            return DecentralizedADMMState(params, zeros, step0)
        return DecentralizedADMMState(params, zeros, step0, jnp.asarray(c, float), params)

    def step(state, batch, key):
        d = jnp.asarray(degree, float)[axis_index(axis_name)]  # the default float
        # 1. the step's one exchange: Σ_{j∈N_i} x_j^k
        others = neighbour_sum(state.x, topology, axis_name)
        # 2. the dual update x^k owes, α^k = α^{k-1} + c Σ_j (x_i^k − x_j^k) (none at k = 0,
        #    where α^0 = 0), with the c of the x-update that made x^k
        owed = (state.step > 0).astype(d.dtype)
        c_old = state.c if residual_balancing else c
        laplacian_x = jax.tree.map(lambda xi, xs: d * xi - xs, state.x, others)
        dual = jax.tree.map(lambda a, lx: a + owed * c_old * lx, state.dual, laplacian_x)
        c_new, extra = c_old, {}
        if residual_balancing:  # 2b. c from the residuals of x^k (none before x^1 exists)
            moved = jax.tree.map(lambda a, b: d * (a - b), state.x, state.previous)
            r, s = jnp.sqrt(psum(jnp.stack([_sq(laplacian_x), _sq(moved)]), axis_name))
            s = c_old * s
            c_new = jnp.where(state.step > 1, balanced_penalty(c_old, r, s, mu, tau), c_old)
            extra = {"rho": c_old, "primal_residual": r, "dual_residual": s}
        # 3. the x-update: argmin f + αᵀx + c Σ_j ||x − (x_i + x_j)/2||² is a prox step at
        #    m − α/ρ_i with m = (d x_i + Σ_j x_j) / (2d)
        rho_i = 2.0 * c_new * d
        v = jax.tree.map(
            lambda xi, xs, a: (d * xi + xs) / (2.0 * d) - a / rho_i, state.x, others, dual
        )
        x = solve(loss_fn, state.x, v, rho_i, batch, key)
        loss, metrics = loss_fn(x, batch, key)
        new = DecentralizedADMMState(x, dual, state.step + 1)
        if residual_balancing:
            new = new._replace(c=c_new, previous=state.x)
        return varying(new, axis_name), {"loss": loss, **metrics, **extra}

    return Algorithm(init, step, params=lambda s: s.x)
