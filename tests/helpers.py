"""Small files the tests write: IDX (MNIST format) and .npz image sets."""

from __future__ import annotations

import gzip
import os

import numpy as np


def write_idx(path: str, array: np.ndarray, compress: bool = False) -> str:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + big_endian.tobytes())
    return path


def write_mnist_dir(directory: str, n_train: int = 64, n_test: int = 32, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            os.path.join(directory, f"{split}-images-idx3-ubyte"),
            rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8),
        )
        write_idx(
            os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"),
            (np.arange(n) % 10).astype(np.uint8),
            compress=True,
        )
    return directory


def write_npz(path: str, n_train: int = 64, n_test: int = 32, shape=(32, 32, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(n_train, *shape)).astype(np.uint8),
        y_train=(np.arange(n_train) % 10).astype(np.int64)[:, None],
        x_test=rng.integers(0, 256, size=(n_test, *shape)).astype(np.uint8),
        y_test=(np.arange(n_test) % 10).astype(np.int64),
    )
    return path


def orbax_round_trip(state, directory):
    """``state`` saved with orbax's StandardCheckpointer and restored onto its own shapes."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, state)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(directory, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
