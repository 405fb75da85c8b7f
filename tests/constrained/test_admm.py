"""Consensus and decentralized ADMM against scikit-learn / numpy solvers (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.linear_model import Lasso

import jdo
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
    batch = {"x": jnp.asarray(np.stack([a[p] for p in parts])),
             "y": jnp.asarray(y[..., None] if kind == "regression" else y),
             "weight": jnp.ones((W, N // W))}  # fmt: skip
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
    algo = jdo.constrained.consensus_admm(loss_fn, rho=rho, alpha=alpha,
                                          residual_balancing=balancing)  # fmt: skip
    state, metrics = _solve(algo, params, batch, 400)
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(_kernel(state.z)[0], ref, atol=1e-4)
    assert metrics["primal_residual"][0] < 1e-6 and metrics["dual_residual"][0] < 1e-6
    if balancing:
        assert metrics["rho"][0] < 50.0  # ρ = 50 is too large here: balancing lowers it


def test_gradient_solver_on_logistic_regression(float64):
    a, b, loss_fn, params, batch = _problem("binary")
    newton = _solve(jdo.constrained.consensus_admm(loss_fn, rho=0.1), params, batch, 300)[0]
    grad = _solve(jdo.constrained.consensus_admm(loss_fn, optax.sgd(0.5), rho=0.1,
                                                 solver="gradient", inner_steps=200),
                  params, batch, 300)[0]  # fmt: skip
    # The Newton-solved one is checked against the optimum: zero gradient of Σ_i f_i.
    z = jax.tree.map(lambda v: v[0], newton.z)
    grads = jax.vmap(lambda bt: jax.grad(lambda p: loss_fn(p, bt)[0])(z))(batch)
    assert np.abs(_kernel(grads).sum(0)).max() < 1e-8
    np.testing.assert_allclose(_kernel(grad.z)[0], _kernel(newton.z)[0], atol=1e-5)


@pytest.mark.parametrize("regularizer,reference", [
    (prox.l2(2.0), lambda v, t: v / (1 + 2.0 * t)),
    (prox.box(-0.5, 0.5), lambda v, t: np.clip(v, -0.5, 0.5)),
    (prox.l1(1.0), lambda v, t: np.sign(v) * np.maximum(np.abs(v) - t, 0)),
])  # fmt: skip
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
    bytes_ = jdo.comm.worker_bytes(algo.step, W, *jax.tree.map(lambda v: v[0], (state, batch)),
                                   jax.random.key(0), in_axes=(0, 0, None))  # fmt: skip
    assert bytes_["all-reduce"] == 0 and bytes_["collective-permute"] > 0


def test_bad_arguments():
    _, _, loss_fn, _, _ = _problem()
    with pytest.raises(ValueError, match="need rho > 0 and 0 < alpha < 2"):
        jdo.constrained.consensus_admm(loss_fn, rho=0.0)
    with pytest.raises(ValueError, match="solver='gradient' needs an optimizer"):
        jdo.constrained.consensus_admm(loss_fn, solver="gradient")
    with pytest.raises(ValueError, match="needs an undirected topology"):
        jdo.constrained.decentralized_admm(loss_fn, None, T.ring(W, directed=True))
