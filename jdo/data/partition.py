"""Splitting a training set over W workers, and stacking the parts as ``[W, n_max, ...]``.

Every function returns a list of W index arrays into the training set, deterministic by seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jdo import checks


def iid(num_samples: int, num_workers: int, seed: int = 0) -> list[np.ndarray]:
    """A random permutation cut into W equal parts (the remainder ``N mod W`` is dropped, so
    every worker's objective has the same weight)."""
    checks.positive_int("num_samples", num_samples)
    checks.positive_int("num_workers", num_workers)
    order = np.random.default_rng(seed).permutation(num_samples)
    per = num_samples // num_workers
    return [np.sort(order[i * per : (i + 1) * per]) for i in range(num_workers)]


def dirichlet(
    labels: np.ndarray, num_workers: int, alpha: float, seed: int = 0, min_size: int = 1
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): for each class, its samples are split over workers in
    proportions drawn from Dirichlet(α·1). Small α → each worker sees few classes. Redraws
    (up to 100 times) until every worker has at least ``min_size`` samples."""
    checks.positive_int("num_workers", num_workers)
    checks.positive("alpha", alpha)
    checks.non_negative_int("min_size", min_size)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_workers)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = np.cumsum(rng.dirichlet(alpha * np.ones(num_workers)))[:-1] * len(idx)
            for w, chunk in enumerate(np.split(idx, cuts.astype(int))):
                parts[w].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise checks.InvalidArgument(
        "alpha",
        f"too small: could not give every one of {num_workers} workers {min_size} "
        f"samples with alpha={alpha}; raise alpha or lower the worker count",
    )


def by_shard(
    labels: np.ndarray, num_workers: int, shards_per_worker: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-iid split (McMahan et al. 2017): sort by label, cut into
    ``W·shards_per_worker`` equal shards, give each worker ``shards_per_worker`` random shards."""
    checks.positive_int("num_workers", num_workers)
    checks.positive_int("shards_per_worker", shards_per_worker)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    num_shards = num_workers * shards_per_worker
    size = len(labels) // num_shards
    if size == 0:
        raise checks.InvalidArgument(
            "shards_per_worker",
            f"too many: {len(labels)} samples cannot make {num_workers} x "
            f"{shards_per_worker} = {num_shards} shards",
        )
    shards = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([order[s * size : (s + 1) * size] for s in shards[w::num_workers]]))
        for w in range(num_workers)
    ]


def natural(groups: np.ndarray, num_workers: int) -> list[np.ndarray]:
    """One worker per group id (a dataset's own split, e.g. per-worker synthetic problems)."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    if len(ids) != num_workers:
        raise checks.InvalidArgument(
            "num_workers",
            f"must equal the data's {len(ids)} groups (one worker per group), got {num_workers}",
        )
    return [np.flatnonzero(groups == g) for g in ids]


class WorkerData(NamedTuple):
    """Every worker's training part, padded to the largest: ``x: [W, n_max, ...]``,
    ``y: [W, n_max, ...]``, ``count: [W]`` (valid rows come first)."""

    x: np.ndarray
    y: np.ndarray
    count: np.ndarray


def stack(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]) -> WorkerData:
    """Gathers ``parts`` (index arrays) into a padded :class:`WorkerData`."""
    if any(len(p) == 0 for p in parts):
        raise checks.InvalidArgument("parts", "must give every worker at least one training sample")
    n_max = max(len(p) for p in parts)
    pad = lambda p: np.concatenate([p, np.full(n_max - len(p), p[0])])
    index = np.stack([pad(p) for p in parts])
    return WorkerData(x[index], y[index], np.array([len(p) for p in parts], dtype=np.int32))


# Splitters: ``split(dataset, num_workers, seed) -> parts`` with the options fixed by a config
# (``partition: {_target_: jdo.data.partition.split_dirichlet, alpha: 0.5}``).


def split_iid(dataset, num_workers: int, seed: int = 0) -> list[np.ndarray]:
    """:func:`iid` over ``dataset``'s training set."""
    return iid(len(dataset.x_train), num_workers, seed)


def split_dirichlet(dataset, num_workers: int, seed: int = 0, *, alpha: float):
    """:func:`dirichlet` label skew of ``dataset``'s training labels."""
    return dirichlet(dataset.y_train, num_workers, checks.positive("alpha", alpha), seed)


def split_shards(dataset, num_workers: int, seed: int = 0, *, shards_per_worker: int):
    """:func:`by_shard` of ``dataset``'s training labels."""
    shards = checks.positive_int("shards_per_worker", shards_per_worker)
    return by_shard(dataset.y_train, num_workers, shards, seed)


def split_natural(dataset, num_workers: int, seed: int = 0) -> list[np.ndarray]:
    """:func:`natural`: ``dataset``'s own groups, one per worker (``seed`` is unused)."""
    del seed
    if dataset.groups is None:
        raise checks.InvalidArgument(
            "dataset",
            f"has no natural partition (the {dataset.name} data has no groups); use "
            "partition=iid, dirichlet or shard",
        )
    return natural(dataset.groups, num_workers)
