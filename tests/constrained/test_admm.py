"""Consensus and decentralized ADMM against scikit-learn / numpy solvers (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.linear_model import Lasso

import jdo
from jdo import checks
from jdo import topology as T
from jdo.constrained import prox

W, N, D = 4, 200, 10


def _problem(kind="regression", seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, D))
    truth = rng.normal(size=D) * (rng.uniform(size=D) < 0.5)
    b = a @ truth + 0.1 * rng.normal(size=N)
    if kind == "binary":
        b = (b > 0).astype(np.float64)
    model = jdo.models.Linear((D,), 1, use_bias=False, rngs=nnx.Rngs(0))
    apply, params = jdo.models.functional(model)
    loss_fn = jdo.data.make_loss(apply, kind, l2=0.0 if kind == "regression" else 1e-2)
    parts = np.split(np.arange(N), W)
    y = np.stack([b[p] for p in parts])
    batch = {
        "x": jnp.asarray(np.stack([a[p] for p in parts])),
        "y": jnp.asarray(y[..., None] if kind == "regression" else y),
        "weight": jnp.ones((W, N // W)),
    }
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return a, b, loss_fn, jax.tree.map(lambda p: jnp.asarray(p, dtype), params), batch


def _solve(algo, params, batch, steps, lifting="vmap", mesh=None):
    init = jax.jit(jdo.lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    step = jax.jit(jdo.lift(algo.step, lifting, mesh=mesh, in_axes=(0, 0, None)))
    state = init(params, jnp.zeros((W, 2), jnp.uint32))
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(0))
    return state, jax.tree.map(np.asarray, metrics)


def _kernel(tree):
    return np.asarray(tree["dense"]["kernel"])[..., 0]


# Each worker's loss is the mean over its N/W rows, and ADMM minimises Σ_i f_i, which is
# (W/N)·(1/2)||Ax − b||²: sklearn's Lasso (1/(2N))||Ax − b||² + α||x||_1 is the same problem
# with α·W as the l1 strength on z.
@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("rho", [0.1, 1.0, 10.0])
def test_lasso_matches_scikit_learn(rho, lifting, float64, mesh8):
    a, b, loss_fn, params, batch = _problem()
    alpha = 0.05
    algo = jdo.constrained.consensus_admm(loss_fn, rho=rho, regularizer=prox.l1(W * alpha))
    mesh = jdo.train.make_mesh(W) if lifting == "shard_map" else None
    state, metrics = _solve(algo, params, batch, 3000 if rho == 0.1 else 600, lifting, mesh)
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(a, b).coef_
    z = _kernel(state.z)[0]
    objective = lambda x: np.sum((a @ x - b) ** 2) / (2 * N) + alpha * np.abs(x).sum()
    assert abs(objective(z) - objective(ref)) <= 1e-5 * objective(ref)
    np.testing.assert_allclose(z, ref, atol=1e-4)
    assert metrics["converged"].all(), metrics  # Boyd §3.3: both residuals under tolerance


@pytest.mark.parametrize("alpha", [1.0, 1.6])
@pytest.mark.parametrize("rho,balancing", [(1.0, False), (50.0, True)])
def test_least_squares_over_relaxation_and_residual_balancing(alpha, rho, balancing, float64):
    a, b, loss_fn, params, batch = _problem()
    algo = jdo.constrained.consensus_admm(
        loss_fn, rho=rho, alpha=alpha, residual_balancing=balancing
    )
    state, metrics = _solve(algo, params, batch, 400)
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(_kernel(state.z)[0], ref, atol=1e-4)
    assert metrics["primal_residual"][0] < 1e-6 and metrics["dual_residual"][0] < 1e-6
    if balancing:
        assert metrics["rho"][0] < 50.0  # ρ = 50 is too large here: balancing lowers it


def test_gradient_solver_on_logistic_regression(float64):
    a, b, loss_fn, params, batch = _problem("binary")
    newton = _solve(jdo.constrained.consensus_admm(loss_fn, rho=0.1), params, batch, 300)[0]
    grad = _solve(
        jdo.constrained.consensus_admm(
            loss_fn, optax.sgd(0.5), rho=0.1, solver="gradient", inner_steps=200
        ),
        params,
        batch,
        300,
    )[0]
    # The Newton-solved one is checked against the optimum: zero gradient of Σ_i f_i.
    z = jax.tree.map(lambda v: v[0], newton.z)
    grads = jax.vmap(lambda bt: jax.grad(lambda p: loss_fn(p, bt)[0])(z))(batch)
    assert np.abs(_kernel(grads).sum(0)).max() < 1e-8
    np.testing.assert_allclose(_kernel(grad.z)[0], _kernel(newton.z)[0], atol=1e-5)


@pytest.mark.parametrize(
    "regularizer,reference",
    [
        (prox.l2(2.0), lambda v, t: v / (1 + 2.0 * t)),
        (prox.box(-0.5, 0.5), lambda v, t: np.clip(v, -0.5, 0.5)),
        (prox.l1(1.0), lambda v, t: np.sign(v) * np.maximum(np.abs(v) - t, 0)),
    ],
)
def test_proxes(regularizer, reference):
    v = np.random.default_rng(0).normal(size=20)
    np.testing.assert_allclose(regularizer(jnp.asarray(v), 0.3), reference(v, 0.3), rtol=1e-6)
    s = prox.simplex()(jnp.asarray(v), 1.0)
    assert abs(float(s.sum()) - 1) < 1e-5 and float(s.min()) >= 0


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_decentralized_admm_on_a_ring_reaches_the_same_optimum(lifting, float64, mesh8):
    a, b, loss_fn, params, batch = _problem()
    mesh = jdo.train.make_mesh(W) if lifting == "shard_map" else None
    algo = jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W), c=1.0)
    state, _ = _solve(algo, params, batch, 400, lifting, mesh)
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    for w in range(W):  # every worker, talking only to its two neighbours
        np.testing.assert_allclose(_kernel(state.x)[w], ref, atol=1e-6)
    bytes_ = jdo.comm.worker_bytes(
        algo.step,
        W,
        *jax.tree.map(lambda v: v[0], (state, batch)),
        jax.random.key(0),
        in_axes=(0, 0, None),
    )
    assert bytes_["all-reduce"] == 0 and bytes_["collective-permute"] > 0


def test_bad_arguments():
    _, _, loss_fn, _, _ = _problem()
    cases = [
        (
            lambda: jdo.constrained.consensus_admm(loss_fn, rho=0.0),
            checks.InvalidArgument,
            "rho",
            "must be a positive number, got 0.0",
        ),
        (
            lambda: jdo.constrained.consensus_admm(loss_fn, alpha=2.0),
            checks.InvalidArgument,
            "alpha",
            r"must be in \(0, 2\), got 2.0",
        ),
        (
            lambda: jdo.constrained.consensus_admm(loss_fn, solver="gradient"),
            checks.InvalidArgument,
            "optimizer",
            "is required by consensus_admm with solver='gradient'",
        ),
        (
            lambda: jdo.constrained.consensus_admm(loss_fn, solver="lbfgs"),
            checks.InvalidArgument,
            "solver",
            "must be one of 'auto', 'newton', 'gradient'",
        ),
        (
            lambda: jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W, directed=True)),
            checks.InvalidArgument,
            "topology",
            "must be undirected",
        ),
        (
            lambda: jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W), c=-1),
            checks.InvalidArgument,
            "c",
            "must be a positive number, got -1",
        ),
    ]
    for make, kind, argument, message in cases:
        with pytest.raises(kind, match=message) as e:
            make()
        assert e.value.argument == argument


def _shi_reference(a, b, c, steps):
    """Shi et al. (2014) decentralized ADMM on a ring of W workers in float64 numpy: worker i
    minimises f_i(x) = (1/(2 n_i))||A_i x − b_i||² exactly."""
    parts = np.split(np.arange(len(a)), W)
    adjacency = (T.ring(W).mixing_matrix() > 0) & ~np.eye(W, dtype=bool)
    d = adjacency.sum(1)
    x, alpha = np.zeros((W, a.shape[1])), np.zeros((W, a.shape[1]))
    xs = []
    for _ in range(steps):
        others = adjacency @ x
        new = np.empty_like(x)
        for i, p in enumerate(parts):
            hess = a[p].T @ a[p] / len(p) + 2 * c * d[i] * np.eye(a.shape[1])
            rhs = a[p].T @ b[p] / len(p) - alpha[i] + c * (d[i] * x[i] + others[i])
            new[i] = np.linalg.solve(hess, rhs)
        x = new
        alpha = alpha + c * (d[:, None] * x - adjacency @ x)
        xs.append(x)
    return xs


def test_decentralized_admm_iterates_match_the_papers_reference(float64):
    a, b, loss_fn, params, batch = _problem()
    algo = jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W), c=0.7)
    init = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name="workers"))
    step = jax.jit(jax.vmap(algo.step, in_axes=(0, 0, None), axis_name="workers"))
    state = init(params, jnp.zeros((W, 2), jnp.uint32))
    reference = _shi_reference(a, b, 0.7, 12)
    for k in range(12):
        state, _ = step(state, batch, jax.random.key(0))
        np.testing.assert_allclose(_kernel(state.x), reference[k], rtol=1e-10, atol=1e-12)


def test_decentralized_admm_exchanges_x_once_per_step(mesh8):
    # x: 12 float32 = 48 B; a ring of 4 is 2 ppermutes per exchange, so one exchange is 96 B
    # per worker per step (it was 192 B: the neighbour sum of the new x was sent again).
    rng = np.random.default_rng(0)
    model = jdo.models.Linear((12,), 1, use_bias=False, rngs=nnx.Rngs(0))
    apply, params = jdo.models.functional(model)
    loss_fn = jdo.data.make_loss(apply, "regression")
    batch = {
        "x": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(8, 1)), jnp.float32),
        "weight": jnp.ones((8,), jnp.float32),
    }
    algo = jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W))
    state = algo.init(params, None)
    key = jax.random.key(0)
    counted = jdo.comm.worker_bytes(algo.step, W, state, batch, key, in_axes=(0, 0, None))
    assert counted["collective-permute"] == 96 and sum(counted.values()) == 96
    mesh = jdo.train.make_mesh(W)
    stacked = jax.tree.map(lambda v: jnp.stack([v] * W), (state, batch))
    lifted = jax.jit(jdo.lift(algo.step, "shard_map", mesh=mesh, in_axes=(0, 0, None)))
    compiled = jdo.comm.collective_bytes(lifted, *stacked, key)
    assert compiled["collective-permute"] == 96 and sum(compiled.values()) == 96
