"""Lagrangian, augmented Lagrangian and quadratic penalty against scipy and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import LinearConstraint, minimize

import jdo
from jdo import checks

W = 4


def _run(algo, params, batch, steps):
    init = jax.vmap(algo.init, in_axes=(None, 0), axis_name=jdo.WORKERS)
    step = jax.vmap(algo.step, in_axes=(0, 0, None), axis_name=jdo.WORKERS)
    state = init(params, jnp.zeros((batch_size(batch), 2), jnp.uint32))

    @jax.jit
    def scan(state):
        return jax.lax.scan(
            lambda s, _: step(s, batch, jax.random.key(0)), state, None, length=steps
        )

    state, metrics = scan(state)
    return state, jax.tree.map(np.asarray, metrics)


def batch_size(batch):
    return jax.tree.leaves(batch)[0].shape[0]


def _qp(seed=0):
    """min ½xᵀPx + qᵀx  s.t.  Gx <= h, with the objective split over W workers."""
    rng = np.random.default_rng(seed)
    n, m = 5, 3
    root = rng.normal(size=(n, n))
    p = root.T @ root + np.eye(n)
    q = rng.normal(size=n) * 3
    g = rng.normal(size=(m, n))
    x_free = np.linalg.solve(p, -q)
    h = g @ x_free + np.array([-1.0, 2.0, -0.5])  # the free optimum violates two constraints
    noise = rng.normal(size=(W, n, n)) * 0.3
    noise = noise + noise.transpose(0, 2, 1)
    noise -= noise.mean(0)  # the workers' P_i average to P
    batch = {"p": jnp.asarray(p + noise), "q": jnp.asarray(q + rng.normal(size=(W, n)) * 0)}
    loss_fn = lambda x, b, key=None: (0.5 * x @ b["p"] @ x + b["q"] @ x, {})
    ineq = lambda x, b: jnp.asarray(g) @ x - jnp.asarray(h)
    res = minimize(
        lambda x: 0.5 * x @ p @ x + q @ x,
        np.zeros(n),
        jac=lambda x: p @ x + q,
        hess=lambda x: p,
        constraints=[LinearConstraint(g, -np.inf, h)],
        method="trust-constr",
        options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 10000},
    )
    x = res.x
    active = np.abs(g @ x - h) < 1e-6
    lam = np.zeros(m)  # KKT: Px + q + G_Aᵀ λ_A = 0, solved on scipy's active set
    lam[active] = np.linalg.lstsq(g[active].T, -(p @ x + q), rcond=None)[0]
    return loss_fn, ineq, batch, x, lam, active, p, g


def test_augmented_lagrangian_matches_the_kkt_point_of_a_qp(float64):
    loss_fn, ineq, batch, x_ref, lam_ref, active, p, g = _qp()
    assert active.sum() >= 1  # the test is about constraints that bind
    lr = 1.0 / (np.linalg.eigvalsh(p).max() + 10.0 * np.linalg.norm(g, 2) ** 2)
    algo = jdo.constrained.augmented_lagrangian(
        loss_fn, optax.sgd(lr), ineq=ineq, rho=10.0, inner_steps=300
    )
    state, metrics = _run(algo, jnp.zeros(5), batch, 300 * 40)
    np.testing.assert_allclose(state.params[0], x_ref, atol=1e-4)
    np.testing.assert_allclose(state.ineq_multipliers[0], lam_ref, atol=1e-4)
    assert metrics["violation"][-1, 0] <= 1e-6
    assert (state.ineq_multipliers >= 0).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda loss, g: jdo.constrained.lagrangian(loss, optax.sgd(0.05), ineq=g, dual_lr=0.05),
        lambda loss, g: jdo.constrained.lagrangian(
            loss, optax.sgd(0.05), ineq=g, dual_lr=0.05, method="alternating"
        ),
        lambda loss, g: jdo.constrained.lagrangian(
            loss, optax.sgd(0.05), ineq=g, dual_lr=0.05, method="extragradient"
        ),
        lambda loss, g: jdo.constrained.augmented_lagrangian(
            loss, optax.sgd(0.05), ineq=g, rho=1.0, inner_steps=20
        ),
        lambda loss, g: jdo.constrained.augmented_lagrangian(
            loss, optax.sgd(0.05), ineq=g, rho=0.0, dual_lr=0.5, inner_steps=20
        ),
        lambda loss, g: jdo.constrained.quadratic_penalty(
            loss, optax.sgd(0.05), ineq=g, rho=1.0, inner_steps=20
        ),
    ],
    ids=["gda", "alternating", "extragradient", "augmented", "augmented_rho0", "penalty"],
)
def test_the_two_node_example_converges_to_1_1(make, float64):
    """min (θ1 − 1)² + (θ2 − 1)² s.t. (θ1 − 1)(θ2 − 1) <= 0 from (0, 0), node i owning θ_i."""
    loss_fn = lambda p, b, key=None: (2.0 * (p[b["node"]] - 1.0) ** 2, {})  # the mean is f
    ineq = lambda p, b: (p[0] - 1.0) * (p[1] - 1.0)
    state, metrics = _run(make(loss_fn, ineq), jnp.zeros(2), {"node": jnp.arange(2)}, 2000)
    assert np.all(np.isfinite(state.params))  # a zero penalty must not give NaN
    np.testing.assert_allclose(state.params[0], [1.0, 1.0], atol=1e-8)
    assert float(ineq(state.params[0], None)) <= 1e-8


def test_equality_constraint_and_quadratic_penalty(float64):
    """min ||x − c||² s.t. Σ x = 1: x* = c − (Σc − 1)/n."""
    c = jnp.asarray([0.3, 0.9, -0.4])
    loss_fn = lambda x, b, key=None: (jnp.sum((x - c) ** 2), {})
    eq = lambda x, b: jnp.sum(x) - 1.0
    expected = c - (c.sum() - 1.0) / 3
    al = jdo.constrained.augmented_lagrangian(
        loss_fn, optax.sgd(0.1), eq=eq, rho=1.0, inner_steps=50
    )
    state, _ = _run(al, jnp.zeros(3), {"w": jnp.zeros(W)}, 2000)
    np.testing.assert_allclose(state.params[0], expected, atol=1e-8)
    np.testing.assert_allclose(state.eq_multipliers[0], [-2 * (1.0 - c.sum()) / 3], atol=1e-7)
    penalty = jdo.constrained.quadratic_penalty(
        loss_fn, optax.sgd(5e-3), eq=eq, rho=1.0, rho_growth=2.0, rho_max=100.0, inner_steps=200
    )
    state, _ = _run(penalty, jnp.zeros(3), {"w": jnp.zeros(W)}, 4000)
    np.testing.assert_allclose(state.params[0], expected, atol=1e-3)  # ρ = 100: a 4.4e-4 bias


def test_constraint_count_needs_the_batch_or_num_ineq():
    loss_fn = lambda x, b, key=None: (jnp.sum(x), {})
    rate = lambda x, b: jnp.mean(b["x"] @ x) - 1.0  # needs data
    with pytest.raises(checks.InvalidArgument, match="pass num_ineq="):
        jdo.constrained.lagrangian(loss_fn, optax.sgd(0.1), ineq=rate).init(jnp.zeros(2), None)
    algo = jdo.constrained.lagrangian(loss_fn, optax.sgd(0.1), ineq=rate, num_ineq=1)
    assert algo.init(jnp.zeros(2), None).ineq_multipliers.shape == (1,)


@pytest.mark.parametrize("shared,expected", [(True, 0.25), (False, 0.4)])
def test_shared_or_per_worker_constraints(shared, expected, float64):
    """min x² s.t. c_i − x <= 0 with c = (0.1, 0.2, 0.3, 0.4) on the 4 workers: averaged, the
    constraint is x >= mean c = 0.25; per worker, every one must hold: x >= max c = 0.4."""
    loss_fn = lambda x, b, key=None: (jnp.sum(x**2), {})
    ineq = lambda x, b: {"c": b["c"] - x}  # a pytree of constraints works too
    algo = jdo.constrained.augmented_lagrangian(
        loss_fn,
        optax.sgd(0.1),
        ineq=ineq,
        rho=5.0,
        inner_steps=50,
        num_ineq=1,
        shared_constraints=shared,
    )
    state, metrics = _run(
        algo, jnp.zeros(1), {"c": jnp.asarray([[0.1], [0.2], [0.3], [0.4]])}, 3000
    )
    np.testing.assert_allclose(state.params[:, 0], expected, atol=1e-7)
    assert metrics["violation"][-1].max() <= 1e-7


ACTIVE = {
    "gda": lambda loss, g: jdo.constrained.lagrangian(loss, optax.sgd(0.05), ineq=g, dual_lr=0.1),
    "extragradient": lambda loss, g: jdo.constrained.lagrangian(
        loss, optax.sgd(0.05), ineq=g, dual_lr=0.1, method="extragradient"
    ),
    "augmented": lambda loss, g: jdo.constrained.augmented_lagrangian(
        loss, optax.sgd(0.05), ineq=g, rho=1.0, inner_steps=20
    ),
    "augmented_rho0": lambda loss, g: jdo.constrained.augmented_lagrangian(
        loss, optax.sgd(0.05), ineq=g, rho=0.0, dual_lr=0.5, inner_steps=20
    ),
}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("name", ACTIVE)
def test_an_active_constraint_and_its_multiplier_under_both_liftings(name, lifting, float64):
    """min ||x − 1||² s.t. x1 + x2 <= 1 over 8 workers: x* = (0.5, 0.5), λ* = 1 (2(x − 1) + λ = 0).
    The multiplier must not depend on the lifting (shard_map sums gradients of shared values)."""
    loss_fn = lambda x, b, key=None: (jnp.sum((x - 1.0) ** 2), {})
    ineq = lambda x, b: x[0] + x[1] - 1.0
    algo = ACTIVE[name](loss_fn, ineq)
    mesh = jdo.train.make_mesh(8) if lifting == "shard_map" else None
    init = jax.jit(jdo.lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    step = jax.jit(jdo.lift(algo.step, lifting, mesh=mesh, in_axes=(0, 0, None)))
    state = init(jnp.zeros(2), jnp.zeros((8, 2), jnp.uint32))
    batch = {"w": jnp.zeros(8)}
    for t in range(1500):
        state, _ = step(state, batch, jax.random.key(0))
        if t % 16 == 0:
            jax.block_until_ready(state)
    np.testing.assert_allclose(state.params, 0.5, atol=1e-6)
    np.testing.assert_allclose(state.ineq_multipliers, 1.0, atol=1e-5)


def test_augmented_lagrangian_rho_0_needs_a_dual_step():
    with pytest.raises(checks.InvalidArgument, match="rho=0 leaves the multipliers still") as e:
        jdo.constrained.augmented_lagrangian(
            lambda x, b, k=None: (x, {}), optax.sgd(0.1), ineq=lambda x, b: x, rho=0.0
        )
    assert e.value.argument == "dual_lr"
