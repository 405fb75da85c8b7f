"""Synthetic problems whose optimum is known, for convergence tests.

Each returns a :class:`~jdo.data.Dataset` meant for the ``Linear`` model, with ``optimum`` in
that model's params layout ``{"dense": {"kernel": [d, 1], "bias": [1]}}``, computed on the host
in float64. The training objective is the mean loss over ALL training samples, which equals the
mean of the workers' objectives when every worker holds the same number of samples.
"""

from __future__ import annotations

import numpy as np

from jdo import checks
from jdo.data.datasets import Dataset


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        checks.positive_int(name, value)


def _linear_params(theta: np.ndarray) -> dict:
    # theta = [kernel (d), bias], kept in float64: comparisons run at the caller's precision.
    return {"dense": {"kernel": theta[:-1, None].copy(), "bias": theta[-1:].copy()}}


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _ridge(x: np.ndarray, y: np.ndarray, l2: float, weights=None) -> np.ndarray:
    # argmin Σ_j w_j (1/2)(θᵀ[x_j 1] − y_j)² + (l2/2)||θ||², weights summing to 1 (default 1/n)
    a = _with_bias(x.astype(np.float64))
    w = np.full(len(a), 1.0 / len(a)) if weights is None else np.asarray(weights, np.float64)
    return np.linalg.solve(
        (a.T * w) @ a + l2 * np.eye(a.shape[1]), (a.T * w) @ y.astype(np.float64)
    )


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, weights=None) -> np.ndarray:
    # argmin Σ_j w_j BCE(θᵀ[x_j 1], y_j) + (l2/2)||θ||² by Newton's method
    a = _with_bias(x.astype(np.float64))
    w = np.full(len(a), 1.0 / len(a)) if weights is None else np.asarray(weights, np.float64)
    t = y.astype(np.float64)
    theta = np.zeros(a.shape[1])
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-a @ theta))
        grad = a.T @ (w * (q - t)) + l2 * theta
        hess = (a.T * (w * q * (1 - q))) @ a + l2 * np.eye(a.shape[1])
        delta = np.linalg.solve(hess, grad)
        theta -= delta
        if np.abs(delta).max() < 1e-14:
            break
    return theta


def optimum_of_parts(dataset: Dataset, parts: list[np.ndarray]) -> dict:
    """The optimum of what W workers jointly minimise, ``(1/W) Σ_i f_i`` with ``f_i`` the mean
    loss over worker i's part: every sample of part i weighs ``1/(W·n_i)``. Equals
    ``dataset.optimum`` when the parts are equal and cover the data; otherwise (a remainder
    dropped, unequal Dirichlet parts) it differs and this is the one the workers can reach."""
    index = np.concatenate(parts)
    weights = np.concatenate([np.full(len(p), 1.0 / (len(parts) * len(p))) for p in parts])
    x, y = dataset.x_train[index], dataset.y_train[index]
    if dataset.kind == "regression":
        return _linear_params(_ridge(x, y[:, 0], dataset.l2, weights))
    if dataset.kind == "binary":
        return _linear_params(_logistic(x, y, dataset.l2, weights))
    raise checks.InvalidArgument("dataset", f"has no known optimum ({dataset.kind} data)")


def least_squares(
    num_samples: int = 1024,
    dim: int = 16,
    noise: float = 0.1,
    l2: float = 0.0,
    num_test: int = 256,
    seed: int = 0,
) -> Dataset:
    """``y = x·w* + b* + ε`` with ``x ~ N(0, I)``.

    Objective: ``(1/2n) Σ (θᵀ[x 1] − y)² + (l2/2)||θ||²``.
    """
    _check_sizes(num_samples=num_samples, dim=dim, num_test=num_test)
    checks.non_negative("noise", noise)
    checks.non_negative("l2", l2)
    checks.integer("seed", seed)
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=dim), rng.normal()
    x = rng.normal(size=(num_samples + num_test, dim))
    y = x @ w + b + noise * rng.normal(size=len(x))
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    theta = _ridge(x[:num_samples], y[:num_samples, 0], l2)
    return Dataset(
        "least_squares",
        x[:num_samples],
        y[:num_samples],
        x[num_samples:],
        y[num_samples:],
        "regression",
        1,
        optimum=_linear_params(theta),
        l2=l2,
    )


def heterogeneous_least_squares(
    num_groups: int = 8,
    samples_per_group: int = 128,
    dim: int = 16,
    heterogeneity: float = 1.0,
    noise: float = 0.1,
    l2: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Least squares where group g has its own truth ``w_g = w* + heterogeneity·δ_g`` and its own
    input scale, so the workers' local optima differ (the setting where constant-step gossip
    SGD stalls and gradient tracking does not). ``groups`` holds the natural partition; the
    optimum is that of the union. Test data are fresh samples from every group."""
    _check_sizes(num_groups=num_groups, samples_per_group=samples_per_group, dim=dim)
    checks.non_negative("heterogeneity", heterogeneity)
    checks.non_negative("noise", noise)
    checks.non_negative("l2", l2)
    checks.integer("seed", seed)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    xs, ys, groups = [], [], []
    for g in range(num_groups):
        w_g = w + heterogeneity * rng.normal(size=dim)
        scale = np.exp(0.25 * rng.normal(size=dim))
        x = rng.normal(size=(2 * samples_per_group, dim)) * scale
        xs.append(x)
        ys.append(x @ w_g + heterogeneity * rng.normal() + noise * rng.normal(size=len(x)))
        groups.append(np.full(samples_per_group, g))
    train = lambda a: np.concatenate([v[:samples_per_group] for v in a]).astype(np.float32)
    test = lambda a: np.concatenate([v[samples_per_group:] for v in a]).astype(np.float32)
    x_train, y_train = train(xs), train(ys)[:, None]
    theta = _ridge(x_train, y_train[:, 0], l2)
    return Dataset(
        "heterogeneous_least_squares",
        x_train,
        y_train,
        test(xs),
        test(ys)[:, None],
        "regression",
        1,
        groups=np.concatenate(groups).astype(np.int32),
        optimum=_linear_params(theta),
        l2=l2,
    )


def logistic_regression(
    num_samples: int = 1024,
    dim: int = 16,
    l2: float = 1e-2,
    num_test: int = 256,
    seed: int = 0,
) -> Dataset:
    """Binary labels from a noisy linear rule; objective mean BCE + ``(l2/2)||θ||²`` (strongly
    convex for ``l2 > 0``), minimised on the host by Newton's method to machine precision."""
    _check_sizes(num_samples=num_samples, dim=dim, num_test=num_test)
    checks.integer("seed", seed)
    checks.number("l2", l2, low=0, low_open=True)  # > 0: a unique optimum
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=dim), 0.5 * rng.normal()
    x = rng.normal(size=(num_samples + num_test, dim))
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    y = (rng.uniform(size=len(x)) < p).astype(np.int32)
    x = x.astype(np.float32)
    theta = _logistic(x[:num_samples], y[:num_samples], l2)
    return Dataset(
        "logistic_regression",
        x[:num_samples],
        y[:num_samples],
        x[num_samples:],
        y[num_samples:],
        "binary",
        1,
        optimum=_linear_params(theta),
        l2=l2,
    )
