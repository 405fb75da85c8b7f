import numpy as np
import pytest

from jdo import data
from tests.helpers import write_idx, write_mnist_dir, write_npz


def test_digits_shapes_and_split():
    ds = data.digits()
    assert ds.x_train.shape == (1348, 8, 8, 1) and ds.x_test.shape == (449, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert set(np.unique(ds.y_train)) == set(range(10)) and ds.num_outputs == 10


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(str(tmp_path / ("a.idx" + (".gz" if compress else ""))), array, compress)
    loaded = data.load_idx(path)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, array)


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.load_idx(tmp_path / "bad")
    write_idx(str(tmp_path / "short"), np.zeros((4, 4), np.uint8))
    raw = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"header says shape \[4, 4\] but holds 13 values"):
        data.load_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        data.load_idx(tmp_path / "missing")


def test_mnist_idx_directory(tmp_path):
    ds = data.mnist_idx(write_mnist_dir(str(tmp_path / "mnist")))
    assert ds.x_train.shape == (64, 28, 28, 1) and ds.x_test.shape == (32, 28, 28, 1)
    assert ds.y_train.dtype == np.int32 and ds.num_outputs == 10
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        (tmp_path / "mnist" / "t10k-images-idx3-ubyte").unlink()
        data.mnist_idx(tmp_path / "mnist")


def test_npz(tmp_path):
    ds = data.from_npz(write_npz(str(tmp_path / "cifar.npz")))
    assert ds.name == "cifar" and ds.x_train.shape == (64, 32, 32, 3)
    assert ds.y_train.shape == (64,) and ds.x_train.max() <= 1.0
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"missing arrays \['x_test', 'y_test', 'y_train'\]"):
        data.from_npz(tmp_path / "partial.npz")
