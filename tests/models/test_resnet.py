"""ResNet-20/32/56 (He et al. 2016, CIFAR variant): the paper's parameter counts, the per-worker
normalisation, a forward pass of each under vmap and shard_map, and ResNet-20 learning under
4 workers."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdo
from jdo import checks, models
from jdo.data import make_loss

PAPER = {20: 0.27, 32: 0.46, 56: 0.85}  # He et al. 2016, Table 6: parameters in millions


def count(params) -> int:
    return sum(p.size for p in jax.tree.leaves(params))


def expected_count(depth: int, classes: int = 10, shortcut: str = "A") -> int:
    """Counted from the architecture: 3x3 convolutions without bias, a norm (γ, β) after each,
    option-A shortcuts free (option B: a 1x1 convolution and a norm where the shape changes),
    a linear head with bias."""
    n, widths = (depth - 2) // 6, (16, 32, 64)
    conv = lambda a, b, k=3: k * k * a * b
    total = conv(3, 16) + 2 * 16
    a = 16
    for b in widths:
        for _ in range(n):
            total += conv(a, b) + conv(b, b) + 4 * b
            if shortcut == "B" and a != b:
                total += conv(a, b, 1) + 2 * b
            a = b
    return total + 64 * classes + classes


def resnet(depth, **kw):
    return models.ResNet((32, 32, 3), 10, depth=depth, **kw, rngs=nnx.Rngs(0))


def abstract_params(depth, **kw):
    """The params' shapes only (nothing is computed or compiled)."""
    return models.functional(nnx.eval_shape(lambda: resnet(depth, **kw)))[1]


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_parameter_count_is_the_papers(depth):
    got = count(abstract_params(depth))
    assert got == expected_count(depth)
    assert round(got / 1e6, 2) == PAPER[depth]
    assert count(abstract_params(depth, norm="batch")) == got
    # option B adds the two projections (16->32, 32->64) and their norms
    assert count(abstract_params(depth, shortcut="B")) == expected_count(depth, shortcut="B")


def test_resnet20_has_269722_parameters():
    assert count(abstract_params(20)) == 269_722


def test_batchnorm_uses_the_batch_statistics_and_holds_no_state():
    layer = models.BatchNorm(3, rngs=nnx.Rngs(0))
    layer.scale[...] = jnp.asarray([1.0, 2.0, 0.5])
    layer.bias[...] = jnp.asarray([0.0, -1.0, 3.0])
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 3)).astype(np.float32)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    want = (x - mean) / np.sqrt(var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, -1.0, 3.0]
    np.testing.assert_allclose(layer(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
    model = nnx.eval_shape(lambda: resnet(20, norm="batch"))
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert jax.tree.leaves(nnx.state(model, nnx.Param)) == jax.tree.leaves(nnx.state(model))


@pytest.mark.parametrize("depth,norm", [(20, "group"), (20, "batch"), (32, "group"), (56, "group")])
def test_forward_under_vmap_and_shard_map(depth, norm, mesh8):
    """Each worker's output is the model on its own batch alone: with BatchNorm, statistics
    of that worker's batch (not of all 8 workers' images, which would differ well beyond the
    tolerance); with GroupNorm, each image's own statistics."""
    apply, params = models.functional(resnet(depth, norm=norm))
    x = jax.random.normal(jax.random.key(depth), (8, 2, 32, 32, 3))  # [W=8, B=2, 32, 32, 3]
    x = x.at[3].multiply(5.0).at[3].add(2.0)  # worker 3's data looks different
    # B=2: BatchNorm's statistics need more than one image
    per_worker = lambda p, xs: apply(p, xs)
    mapped = jax.jit(jdo.lift(per_worker, "vmap", in_axes=(None, 0)))(params, x)
    sharded = jax.jit(jdo.lift(per_worker, "shard_map", mesh=mesh8, in_axes=(None, 0)))(params, x)
    assert mapped.shape == sharded.shape == (8, 2, 10)
    assert np.all(np.isfinite(mapped))
    np.testing.assert_allclose(sharded, mapped, rtol=1e-5, atol=1e-5)
    one = jax.jit(apply)
    np.testing.assert_allclose(mapped[3], one(params, x[3]), rtol=1e-5, atol=1e-5)
    if (depth, norm) == (20, "batch"):
        pooled = one(params, x.reshape(16, 32, 32, 3)).reshape(8, 2, 10)
        assert not np.allclose(pooled[3], mapped[3], atol=1e-3)  # not one statistic for all
    if (depth, norm) == (20, "group"):
        np.testing.assert_allclose(mapped[3, 1:], one(params, x[3, 1:]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # moved out of the not-slow suite (its 15-minute budget); CI runs it
def test_resnet20_loss_falls_under_four_workers():
    """20 steps of all-reduce SGD with 4 workers, each fitting its own 2 random 32x32 images
    with random labels: the mean training loss falls. (Gradients one worker at a time,
    ``map="scan"``, so the sequential map runs a ResNet too.)"""
    workers, batch = 4, 2
    apply, params = models.functional(resnet(20))
    loss_fn = make_loss(apply, "classification")
    algo = jdo.algorithms.allreduce_sgd(loss_fn, optax.adam(3e-3))
    kx, ky = jax.random.split(jax.random.key(0))
    data = {
        "x": jax.random.normal(kx, (workers, batch, 32, 32, 3)),
        "y": jax.random.randint(ky, (workers, batch), 0, 10),
        "weight": jnp.ones((workers, batch)),
    }
    keys = jax.random.split(jax.random.key(1), workers)
    state = jax.jit(jdo.lift(algo.init, in_axes=(None, 0)))(params, keys)
    step = jax.jit(jdo.lift(algo.step, map="scan"))
    losses = []
    for t in range(20):
        state, metrics = step(state, data, jax.vmap(jax.random.fold_in, (0, None))(keys, t))
        losses.append(float(jnp.mean(metrics["loss"])))  # waits: no queue of dispatched steps
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.6 * losses[0], losses


def test_bad_arguments_name_the_argument():
    for kw, argument, message in [
        ({"depth": 21}, "depth", "must be 6n + 2"),
        ({"norm": "layer"}, "norm", "must be one of"),
        ({"shortcut": "C"}, "shortcut", "must be one of"),
        ({"groups": 3}, "groups", "must divide every width"),
    ]:
        with pytest.raises(checks.InvalidArgument, match=re.escape(message)) as e:
            resnet(**{"depth": 20, **kw})
        assert e.value.argument == argument
    with pytest.raises(checks.InvalidArgument, match="image shape"):
        models.ResNet((64,), 10, rngs=nnx.Rngs(0))


def test_cnn_max_pools_images_of_16x16_and_larger():
    """model=cnn on 28x28 MNIST: 2x2 max pooling after each convolution (numpy reference);
    on 8x8 digits none, as before."""
    assert models.CNN((28, 28, 1), 10, rngs=nnx.Rngs(0)).pool
    assert not models.CNN((8, 8, 1), 10, rngs=nnx.Rngs(0)).pool
    assert not models.CNN((28, 28, 1), 10, pool=False, rngs=nnx.Rngs(0)).pool
    cnn = models.CNN((10, 10, 1), 10, features=(4, 6), pool=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 1))
    h = np.asarray(x)
    for conv in cnn.convs:
        h = np.maximum(np.asarray(conv(jnp.asarray(h))), 0.0)
        b, r, c, f = h.shape
        h = h[:, : r // 2 * 2, : c // 2 * 2].reshape(b, r // 2, 2, c // 2, 2, f).max(axis=(2, 4))
    want = np.asarray(cnn.head(jnp.asarray(h.mean(axis=(1, 2)))))
    np.testing.assert_allclose(cnn(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(checks.WrongType, match="pool must be true, false or null"):
        models.CNN((28, 28, 1), 10, pool="yes", rngs=nnx.Rngs(0))
