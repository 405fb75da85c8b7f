"""Numpy references for the robust aggregators, written from the papers' definitions as plain
loops over the inputs (float64), on FLAT inputs ``[W, D]`` (a pytree flattened by
:func:`flatten`), and the test inputs: Gaussian honest inputs plus far-away outliers."""

import numpy as np

SHAPES = {"w": (4, 3), "b": (5,)}  # a small pytree: D = 17


def inputs(w: int, outliers: int, seed: int = 0, shapes=SHAPES) -> dict[str, np.ndarray]:
    """A stacked float32 pytree ``[W, ...]``: ``W − outliers`` honest N(0, 1) inputs and, at
    random positions, ``outliers`` inputs at N(10, 3) (far from the honest cloud, and from each
    other)."""
    rng = np.random.default_rng(seed)
    bad = rng.choice(w, size=outliers, replace=False)
    out = {}
    for name, shape in shapes.items():
        x = rng.normal(size=(w, *shape))
        x[bad] = rng.normal(10.0, 3.0, size=(outliers, *shape))
        out[name] = x.astype(np.float32)
    return out


def flatten(xs) -> np.ndarray:
    """``[W, D]`` float64: each input's leaves flattened and concatenated (sorted keys)."""
    return np.concatenate(
        [np.asarray(xs[k], np.float64).reshape(len(xs[k]), -1) for k in sorted(xs)], axis=1
    )


def unflatten(flat: np.ndarray, like) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten` for ONE input (``flat: [D]``), shaped like ``like[k][0]``."""
    out, at = {}, 0
    for k in sorted(like):
        shape = np.shape(like[k])[1:]
        size = int(np.prod(shape))
        out[k] = flat[at : at + size].reshape(shape)
        at += size
    return out


def krum_scores(flat: np.ndarray, f: int) -> np.ndarray:
    w = len(flat)
    scores = np.zeros(w)
    for i in range(w):
        others = [np.sum((flat[i] - flat[j]) ** 2) for j in range(w) if j != i]
        scores[i] = np.sum(sorted(others)[: w - f - 2])
    return scores


def krum_index(flat: np.ndarray, f: int) -> int:
    return int(np.argmin(krum_scores(flat, f)))  # np.argmin: the first of equal minima


def multi_krum(flat: np.ndarray, f: int, m: int) -> np.ndarray:
    order = np.argsort(krum_scores(flat, f), kind="stable")
    return flat[order[:m]].mean(axis=0)


def weiszfeld(flat: np.ndarray, iters: int, eps: float = 1e-8) -> np.ndarray:
    z = flat.mean(axis=0)
    for _ in range(iters):
        beta = np.array([1.0 / max(eps, np.linalg.norm(x - z)) for x in flat])
        z = np.sum(beta[:, None] * flat, axis=0) / np.sum(beta)
    return z


def centered_clipping(flat: np.ndarray, tau: float, iters: int, center=None) -> np.ndarray:
    v = np.zeros(flat.shape[1]) if center is None else np.asarray(center, np.float64)
    for _ in range(iters):
        clipped = []
        for x in flat:
            z = x - v
            norm = np.linalg.norm(z)
            clipped.append(z * min(1.0, tau / norm) if norm > 0 else z)
        v = v + np.mean(clipped, axis=0)
    return v


def nearest_neighbor_mixing(flat: np.ndarray, f: int) -> np.ndarray:
    w = len(flat)
    out = np.zeros_like(flat)
    for i in range(w):
        dist = [np.sum((flat[i] - flat[j]) ** 2) for j in range(w)]
        nearest = np.argsort(dist, kind="stable")[: w - f]
        out[i] = flat[nearest].mean(axis=0)
    return out


def bucketing(flat: np.ndarray, s: int, perm: np.ndarray) -> np.ndarray:
    shuffled = flat[np.asarray(perm)]
    return np.stack([shuffled[b : b + s].mean(axis=0) for b in range(0, len(flat), s)])
