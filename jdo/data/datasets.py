"""Datasets as plain numpy arrays: scikit-learn's bundled digits and local IDX/.npz files.

Images are float32 NHWC scaled to [0, 1]; labels are int32. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field

import numpy as np

from jdo import checks


@dataclass(frozen=True)
class Dataset:
    """A supervised dataset split into train and test.

    Attributes:
      x_train, y_train, x_test, y_test: numpy arrays (inputs ``[N, ...]``, targets ``[N, ...]``).
      kind: ``"classification"`` (int labels), ``"regression"`` or ``"binary"`` (0/1 labels).
      num_outputs: the model's output width (classes, or 1).
      groups: optional ``[N_train]`` int group id per training sample: a natural partition
        (one group per worker), used by ``partition="natural"``.
      optimum: optional params pytree minimising the training objective (synthetic problems).
      l2: the l2 penalty ``(l2/2)||θ||²`` that is part of the training objective.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: str
    num_outputs: int
    groups: np.ndarray | None = None
    optimum: dict | None = field(default=None, repr=False)
    l2: float = 0.0

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """``(x_train, y_train, x_test, y_test)``: a random ``test_fraction`` held out (``seed``)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), as ``[N, 8, 8, 1]``."""
    checks.number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    checks.integer("seed", seed)
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    y = raw.target.astype(np.int32)
    return Dataset("digits", *split(x, y, test_fraction, seed), "classification", 10)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format; ``.gz`` is decompressed) into a numpy array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but holds {data.size} values")
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: str, stem: str) -> str:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def mnist_idx(directory: str | os.PathLike, name: str = "mnist") -> Dataset:
    """MNIST/Fashion-MNIST from the four standard IDX files in ``directory``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"data directory not found: {directory}")
    arrays = [
        load_idx(_find(directory, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ]
    x_train, y_train, x_test, y_test = arrays
    scale = lambda x: (x.astype(np.float32) / 255.0)[..., None]
    return Dataset(
        name,
        scale(x_train),
        y_train.astype(np.int32),
        scale(x_test),
        y_test.astype(np.int32),
        "classification",
        int(max(y_train.max(), y_test.max())) + 1,
    )


def from_npz(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """A classification dataset from an ``.npz`` with ``x_train, y_train, x_test, y_test``.

    Images may be ``[N, H, W]`` or NHWC (``[N, H, W, C]``, as CIFAR-10 saved by
    ``np.savez``); uint8 images are scaled to [0, 1].
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f".npz file not found: {path}")
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)} (has {sorted(f.files)})")
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def images(x):
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return x[..., None] if x.ndim == 3 else x

    y_train, y_test = (arrays[k].astype(np.int32).reshape(-1) for k in ("y_train", "y_test"))
    return Dataset(
        name or os.path.splitext(os.path.basename(path))[0],
        images(arrays["x_train"]),
        y_train,
        images(arrays["x_test"]),
        y_test,
        "classification",
        int(max(y_train.max(), y_test.max())) + 1,
    )
