"""jdo.models.conv: the matmul (im2col) convolution against a numpy reference and against XLA's
convolution, alone, under vmap and under shard_map; the models' parameters do not depend on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdo import checks, models
from jdo.models.conv import Conv, conv2d_matmul, resolve_impl
from jdo.models.functional import functional
from jdo.models.resnet import BasicBlock


def numpy_conv(x, kernel, strides, padding):
    """Cross-correlation, loops over the output's positions (NHWC, HWIO)."""
    x = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    kh, kw, _, features = kernel.shape
    rows = (x.shape[1] - kh) // strides[0] + 1
    cols = (x.shape[2] - kw) // strides[1] + 1
    y = np.zeros((x.shape[0], rows, cols, features))
    for r in range(rows):
        for c in range(cols):
            patch = x[:, r * strides[0] : r * strides[0] + kh, c * strides[1] : c * strides[1] + kw]
            y[:, r, c] = np.einsum("bijc,ijcf->bf", patch, kernel)
    return y


@pytest.mark.parametrize(
    "kernel_shape, strides, padding, image",
    [
        ((3, 3, 2, 4), (1, 1), ((1, 1), (1, 1)), (7, 9)),
        ((3, 3, 2, 4), (2, 2), ((1, 1), (1, 1)), (8, 8)),
        ((3, 2, 3, 5), (2, 1), ((0, 1), (2, 0)), (9, 6)),
        ((1, 1, 3, 2), (2, 2), ((0, 0), (0, 0)), (8, 7)),
    ],
)
def test_conv2d_matmul_equals_numpy(kernel_shape, strides, padding, image):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *image, kernel_shape[2])).astype(np.float32)
    kernel = rng.normal(size=kernel_shape).astype(np.float32)
    got = conv2d_matmul(jnp.asarray(x), jnp.asarray(kernel), strides=strides, padding=padding)
    want = numpy_conv(x.astype(np.float64), kernel.astype(np.float64), strides, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID", 1, ((1, 0), (0, 2))])
@pytest.mark.parametrize("strides", [1, 2])
def test_conv_layer_equals_xla_and_has_its_parameters(padding, strides):
    make = lambda impl: Conv(  # noqa: E731
        3, 5, kernel_size=(3, 3), strides=strides, padding=padding, impl=impl, rngs=nnx.Rngs(0)
    )
    matmul, xla = make("matmul"), make("xla")
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 3))
    np.testing.assert_allclose(matmul(x), xla(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        xla(x),
        nnx.Conv(3, 5, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))(x),
        rtol=0,
        atol=0,
    )


def assert_same_parameters(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_resnet_block_has_the_same_parameters_and_outputs():
    """A ResNet's stride-2 basic block with its 1x1 projection: the same parameters and XLA's
    outputs with the matmul program (tests/models/test_resnet.py runs whole ResNets, with their
    default conv, under vmap and shard_map)."""
    block = lambda conv: BasicBlock(  # noqa: E731
        4, 8, 2, norm="group", groups=2, shortcut="B", conv=conv, rngs=nnx.Rngs(1)
    )
    (apply_m, params_m), (apply_x, params_x) = functional(block("matmul")), functional(block("xla"))
    assert_same_parameters(params_m, params_x)
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 4))
    got, want = jax.jit(apply_m)(params_m, x), jax.jit(apply_x)(params_x, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cnn_matches_xla_under_vmap_and_shard_map(mesh8):
    """Same parameters; 8 workers with their own parameters and images: the matmul program
    under vmap and under shard_map equals XLA's convolution under vmap."""
    from jax.sharding import PartitionSpec as P

    shape = (16, 16, 1)
    make = lambda conv: models.CNN(shape, 10, features=(4, 6), conv=conv, rngs=nnx.Rngs(0))  # noqa: E731
    (apply_m, params_m), (apply_x, params_x) = functional(make("matmul")), functional(make("xla"))
    assert_same_parameters(params_m, params_x)
    scale = jnp.linspace(0.5, 1.5, 8)
    stacked = jax.tree.map(lambda p: p * scale.reshape(8, *[1] * p.ndim), params_m)
    x = jax.random.normal(jax.random.key(2), (8, 3, *shape))
    want = jax.jit(jax.vmap(apply_x))(stacked, x)
    np.testing.assert_allclose(jax.jit(jax.vmap(apply_m))(stacked, x), want, rtol=1e-4, atol=1e-5)

    def one_worker(p, xs):
        return apply_m(jax.tree.map(lambda a: a[0], p), xs[0])[None]

    sharded = jax.shard_map(
        one_worker, mesh=mesh8, in_specs=(P("workers"), P("workers")), out_specs=P("workers")
    )
    np.testing.assert_allclose(jax.jit(sharded)(stacked, x), want, rtol=1e-4, atol=1e-5)


def test_auto_is_matmul_on_the_cpu_and_bad_values_are_named():
    assert resolve_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(checks.InvalidArgument, match="conv must be one of") as e:
        models.CNN((8, 8, 1), 10, conv="fast", rngs=nnx.Rngs(0))
    assert e.value.argument == "conv"
    with pytest.raises(checks.InvalidArgument, match="kernel_dilation is not supported"):
        Conv(1, 2, (3, 3), kernel_dilation=2, impl="matmul", rngs=nnx.Rngs(0))
