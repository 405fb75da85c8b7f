import jax
import numpy as np
import pytest

from jdo import checks, data
from jdo.data import partition


def _check_disjoint(parts, n):
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) and joined.max() < n


def test_iid_equal_and_deterministic():
    parts = partition.iid(103, 4, seed=1)
    assert [len(p) for p in parts] == [25] * 4
    _check_disjoint(parts, 103)
    assert all((a == b).all() for a, b in zip(parts, partition.iid(103, 4, seed=1), strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 100)

    def classes_per_worker(alpha):
        parts = partition.dirichlet(labels, 8, alpha, seed=0)
        _check_disjoint(parts, len(labels))
        assert sum(len(p) for p in parts) == len(labels)
        return np.mean([(np.bincount(labels[p], minlength=10) > 5).sum() for p in parts])

    assert classes_per_worker(0.05) < classes_per_worker(100.0)
    assert classes_per_worker(100.0) == 10
    with pytest.raises(checks.InvalidArgument, match="alpha must be a positive number, got 0.0"):
        partition.dirichlet(labels, 8, 0.0)


def test_by_shard_gives_few_classes():
    labels = np.repeat(np.arange(10), 100)
    parts = partition.by_shard(labels, 10, shards_per_worker=2, seed=0)
    _check_disjoint(parts, len(labels))
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_natural_and_stack():
    groups = np.array([1, 0, 1, 0, 1])
    parts = partition.natural(groups, 2)
    assert [p.tolist() for p in parts] == [[1, 3], [0, 2, 4]]
    with pytest.raises(checks.InvalidArgument, match="must equal the data's 2 groups"):
        partition.natural(groups, 3)
    x = np.arange(5)[:, None] * np.ones((1, 3))
    stacked = partition.stack(x, np.arange(5), parts)
    assert stacked.x.shape == (2, 3, 3) and stacked.count.tolist() == [2, 3]
    assert stacked.y[0, :2].tolist() == [1, 3]


def test_full_batch_masks_padding_and_sampling_stays_in_range():
    x = np.arange(6, dtype=np.float32)[:, None]
    y = np.arange(6)
    full = data.sample_batch(x, y, 4, None, None)
    assert full["weight"].tolist() == [1, 1, 1, 1, 0, 0]
    batch = data.sample_batch(x, y, 4, jax.random.key(0), 64)
    assert batch["y"].max() < 4 and batch["x"].shape == (64, 1)
