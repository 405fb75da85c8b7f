"""Sequence datasets: MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

Inputs are float32 ``[N, T, C]`` (sequence length × channels), labels int32. Nothing is ever
downloaded: the signals are generated from the package's ten templates with its own
transformations (padding, scaling, translation, correlated and iid noise, shear), then cached
as an ``.npz`` keyed by every generation argument and the package version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import random

import numpy as np

from jdo import checks
from jdo.data.datasets import Dataset

MNIST1D_EXTRA = "task=mnist1d needs the mnist1d package: pip install 'jdo[mnist1d]'"
CACHE_ENV = "JDO_CACHE_DIR"


def default_cache_dir() -> str:
    """``$JDO_CACHE_DIR``, else ``$XDG_CACHE_HOME/jdo``, else ``~/.cache/jdo``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jdo")


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(MNIST1D_EXTRA) from None


def _generate(args: dict) -> dict:
    """The package's ``make_dataset`` with ``args``; it seeds NumPy's and Python's global
    generators, so both are restored afterwards (a caller's random state is left as it was).
    ``make_dataset`` only computes: ``get_dataset`` (which may download) is never called."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(MNIST1D_EXTRA) from None
    full = get_dataset_args(as_dict=True)
    full.update(args)
    full.pop("url", None)  # only get_dataset's download reads it
    # the package draws from NumPy's legacy global generator: save it to put it back
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        from mnist1d.utils import ObjectView

        return make_dataset(ObjectView(full))
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _arrays(raw: dict) -> dict[str, np.ndarray]:
    as_x = lambda x: np.asarray(x, np.float32)[..., None]  # [N, T] -> [N, T, 1]
    return {
        "x_train": as_x(raw["x"]),
        "y_train": np.asarray(raw["y"], np.int32),
        "x_test": as_x(raw["x_test"]),
        "y_test": np.asarray(raw["y_test"], np.int32),
    }


def _cached(args: dict, cache_dir: str) -> dict[str, np.ndarray]:
    key = json.dumps({**args, "mnist1d": _mnist1d_version()}, sort_keys=True)
    path = os.path.join(cache_dir, f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    arrays = _arrays(_generate(args))
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # concurrent runs each write whole files; the last one wins
    return arrays


def mnist1d(
    num_samples: int = 5000,
    train_split: float = 0.8,
    seed: int = 42,
    shuffle_seq: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
) -> Dataset:
    """MNIST-1D: ten classes of 1-D signals of length 40, ``x`` as ``[N, 40, 1]``.

    The defaults are the paper's dataset: 5,000 samples (500 per digit) split 4,000 train /
    1,000 test, generation seed 42. Its reference test accuracies: logistic regression 32%,
    MLP 68%, CNN 94%, GRU 91% (Greydanus, "Scaling down Deep Learning", 2020,
    arXiv:2011.14439).

    Args:
      num_samples: signals generated (a multiple of 10: the same number per digit).
      train_split: fraction of them in the training split (the first ones, as the package).
      seed: the generation seed (the paper's is 42); the same seed gives the same data.
      shuffle_seq: permute the time axis by one fixed permutation (the paper's test of
        spatial inductive bias).
      cache: keep the generated arrays in ``cache_dir`` (generation takes seconds) and read
        them from there next time.
      cache_dir: where; ``None`` is :func:`default_cache_dir`.
    """
    checks.positive_int("num_samples", num_samples)
    if num_samples % 10:
        raise checks.InvalidArgument("num_samples", f"must be a multiple of 10, got {num_samples}")
    checks.number("train_split", train_split, low=0, high=1, low_open=True, high_open=True)
    checks.integer("seed", seed)
    for name, flag in (("shuffle_seq", shuffle_seq), ("cache", cache)):
        if not isinstance(flag, bool):
            raise checks.WrongType(name, f"must be true or false, got {flag!r}")
    args = {
        "num_samples": num_samples,
        "train_split": float(train_split),
        "seed": seed,
        "shuffle_seq": shuffle_seq,
    }
    if cache:
        arrays = _cached(args, cache_dir or default_cache_dir())
    else:
        arrays = _arrays(_generate(args))
    return Dataset(
        "mnist1d",
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        "classification",
        10,
    )
