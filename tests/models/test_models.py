import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdo import checks, models


@pytest.mark.parametrize(
    "factory,in_shape",
    [(models.MLP, (8, 8, 1)), (models.CNN, (8, 8, 1)), (models.Linear, (16,))],
)
def test_functional_split_matches_module(factory, in_shape):
    module = factory(in_shape, 10, rngs=nnx.Rngs(0))
    apply, params = models.functional(module)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *in_shape)), jnp.float32)
    np.testing.assert_allclose(jax.jit(apply)(params, x), module(x), rtol=1e-6, atol=1e-6)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    shifted = jax.tree.map(lambda p: p + 1.0, params)  # params are a plain pytree apply reads
    assert not np.allclose(apply(shifted, x), apply(params, x))


def test_mlp_parameter_count():
    _, params = models.functional(models.MLP((64,), 10, hidden=(32,), rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(params)) == 64 * 32 + 32 + 32 * 10 + 10


def test_cnn_needs_images():
    with pytest.raises(checks.InvalidArgument, match=r"must be an image shape \(H, W, C\)") as e:
        models.CNN((64,), 10, rngs=nnx.Rngs(0))
    assert e.value.argument == "in_shape"


@pytest.mark.parametrize("factory,argument", [(models.MLP, "hidden"), (models.CNN, "features")])
def test_layer_sizes_must_be_a_list(factory, argument):
    # hidden=128 (an int for a list) used to fail deep in the model with
    # "TypeError: Value after * must be an iterable"
    with pytest.raises(checks.WrongType, match="must be a list of integers, got 128") as e:
        factory((8, 8, 1), 10, **{argument: 128}, rngs=nnx.Rngs(0))
    assert e.value.argument == argument
    with pytest.raises(checks.InvalidArgument, match="integers >= 1") as e:
        factory((8, 8, 1), 10, **{argument: [16, 0]}, rngs=nnx.Rngs(0))
    assert e.value.argument == argument
