"""Sequence models: the MNIST-1D reference parameter counts, the 1-D convolution and the GRU
against numpy references, and a forward pass of every model under vmap and shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdo
from jdo import checks, models
from jdo.models.sequence import conv1d, gru_scan

SEQUENCE_MODELS = (models.CNN1D, models.GRU, models.Transformer)


def _count(factory, *args, **kwargs) -> int:
    """Parameters of ``factory(*args, **kwargs)``, from its shapes alone (nothing computed)."""
    abstract = nnx.eval_shape(lambda: factory(*args, **kwargs, rngs=nnx.Rngs(0)))
    return sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def _random_model(factory, in_shape, num_outputs, rng, workers=(), **kwargs):
    """``apply`` of ``factory``'s model and params drawn by numpy (N(0, 0.3²), shape
    ``[*workers, ...]`` per leaf): the forward pass checks need no JAX initialiser compiled."""
    model = nnx.eval_shape(lambda: factory(in_shape, num_outputs, **kwargs, rngs=nnx.Rngs(0)))
    apply, shapes = models.functional(model)
    draw = lambda s: jnp.asarray(0.3 * rng.normal(size=(*workers, *s.shape)), jnp.float32)
    return apply, jax.tree.map(draw, shapes)


def test_cnn1d_has_the_reference_parameter_count():
    # mnist1d's ConvBase (notebooks/models.py): Conv1d(1, 25, 5, stride 2, padding 1),
    # Conv1d(25, 25, 3, 2, 1) twice, Linear(125, 10). Lengths 40 -> 19 -> 10 -> 5
    # (L' = (L + 2 - k) // 2 + 1), so the head reads 5 * 25 = 125 features:
    # (1*25*5 + 25) + 2 * (25*25*3 + 25) + (125*10 + 10) = 150 + 3800 + 1260 = 5210.
    assert _count(models.CNN1D, (40, 1), 10) == 5210


def test_gru_has_the_reference_parameter_count():
    # mnist1d's GRUBase: torch.nn.GRU(1, 6, bidirectional=True), per direction
    # weight_ih 18x1 + weight_hh 18x6 + bias_ih 18 + bias_hh 18 = 162; two directions 324;
    # Linear(2*6*40 = 480, 10) = 4810; 324 + 4810 = 5134.
    assert _count(models.GRU, (40, 1), 10) == 5134
    assert _count(models.GRU, (40, 1), 10, bidirectional=False) == 162 + (6 * 40 * 10 + 10)


def _transformer_count(t, c, k, *, patch_size, dim, depth, heads, mlp_dim):
    del heads  # splits d among the heads: no parameter of its own
    p, d, m = patch_size, dim, mlp_dim
    block = 2 * d + (4 * d * d + 4 * d) + 2 * d + (d * m + m) + (m * d + d)
    return (p * c * d + d) + (t // p) * d + depth * block + 2 * d + (d * k + k)


@pytest.mark.parametrize(
    "in_shape,k,kwargs",
    [
        ((40, 1), 10, {}),
        ((20, 3), 7, dict(patch_size=5, dim=24, depth=3, heads=3, mlp_dim=40)),
    ],
)
def test_transformer_parameter_count_is_the_closed_form(in_shape, k, kwargs):
    full = dict(patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64) | kwargs
    expected = _transformer_count(*in_shape, k, **full)
    assert _count(models.Transformer, in_shape, k, **kwargs) == expected
    if not kwargs:
        assert expected == 17962  # the number jdo/conf/model/transformer.yaml states


def _conv_reference(x, w, stride, padding):
    x = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
    k = w.shape[0]
    n = (x.shape[1] - k) // stride + 1
    y = np.zeros((x.shape[0], n, w.shape[2]))
    for t in range(n):
        for i in range(k):
            y[:, t] += x[:, stride * t + i] @ w[i]
    return y


@pytest.mark.parametrize("k,stride,padding", [(5, 2, 1), (3, 2, 1), (3, 1, 0), (4, 3, 2)])
def test_conv1d_matches_numpy(k, stride, padding):
    rng = np.random.default_rng(k + stride)
    x, w = rng.normal(size=(3, 17, 2)), rng.normal(size=(k, 2, 5))
    got = conv1d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), stride, padding)
    np.testing.assert_allclose(got, _conv_reference(x, w, stride, padding), rtol=1e-5, atol=1e-5)


def _gru_reference(x, w_i, b_i, w_h, b_h, reverse):
    """PyTorch's nn.GRU equations, one step at a time (gates r, z, n)."""
    hidden = w_h.shape[0]
    h, out = np.zeros((x.shape[0], hidden)), np.zeros((x.shape[0], x.shape[1], hidden))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        a, g = x[:, t] @ w_i + b_i, h @ w_h + b_h
        r = sigmoid(a[:, :hidden] + g[:, :hidden])
        z = sigmoid(a[:, hidden : 2 * hidden] + g[:, hidden : 2 * hidden])
        n = np.tanh(a[:, 2 * hidden :] + r * g[:, 2 * hidden :])
        h = (1 - z) * n + z * h
        out[:, t] = h
    return out


def test_gru_matches_numpy_in_both_directions():
    rng = np.random.default_rng(0)
    apply, params = _random_model(models.GRU, (9, 2), 3, rng, hidden=4)
    x = rng.normal(size=(5, 9, 2))
    p = jax.tree.map(np.asarray, params)
    weights = [
        [p["directions"][d][m][a] for m in ("inputs", "hidden") for a in ("kernel", "bias")]
        for d in (0, 1)
    ]
    hs = [_gru_reference(x, *weights[d], reverse=d == 1) for d in (0, 1)]
    features = np.concatenate(hs, axis=-1).reshape(5, -1)
    expected = features @ p["head"]["kernel"] + p["head"]["bias"]
    logits = jax.jit(apply)(params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    d0 = p["directions"][0]
    forward = jax.jit(gru_scan)(
        jnp.asarray(x @ d0["inputs"]["kernel"] + d0["inputs"]["bias"], jnp.float32),
        d0["hidden"]["kernel"],
        d0["hidden"]["bias"],
    )
    np.testing.assert_allclose(forward, hs[0], atol=1e-5)


@pytest.fixture(scope="module", params=SEQUENCE_MODELS, ids=lambda f: f.__name__)
def workers_forward(request):
    """A model's ``apply``, 8 workers' own params and inputs, and each worker's logits
    computed on its own (one jitted forward, worker by worker)."""
    rng = np.random.default_rng(0)
    apply, stacked = _random_model(request.param, (40, 1), 10, rng, workers=(8,))
    xs = jnp.asarray(rng.normal(size=(8, 4, 40, 1)), jnp.float32)
    one = jax.jit(apply)
    expected = np.stack([one(jax.tree.map(lambda p, w=w: p[w], stacked), xs[w]) for w in range(8)])
    return apply, stacked, xs, expected


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_forward_under_every_lifting(workers_forward, lifting, mesh8):
    """The lifted forward pass equals each worker's own, and the worker-mean of the logits
    (a collective over the worker axis) equals their mean."""
    apply, params, xs, expected = workers_forward

    def worker(p, x):
        logits = apply(p, x)
        return logits, jdo.comm.mean(logits)

    logits, mean = jax.jit(jdo.lift(worker, lifting, mesh=mesh8))(params, xs)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, np.broadcast_to(expected.mean(0), mean.shape), atol=1e-5)


@pytest.mark.parametrize("factory", SEQUENCE_MODELS, ids=lambda f: f.__name__)
def test_sequence_models_need_a_sequence_shape(factory):
    with pytest.raises(checks.InvalidArgument, match=r"must be a sequence shape \(T, C\)") as e:
        factory((8, 8, 1), 10, rngs=nnx.Rngs(0))
    assert e.value.argument == "in_shape"


@pytest.mark.parametrize(
    "factory,kwargs,argument,message",
    [
        (models.Transformer, dict(patch_size=3), "patch_size", "must divide the sequence length"),
        (models.Transformer, dict(heads=5), "heads", "must divide dim 32"),
        (models.CNN1D, dict(kernel_sizes=[5, 3]), "kernel_sizes", "one size per layer"),
        (models.CNN1D, dict(kernel_sizes=[50, 3, 3]), "in_shape", "too short"),
        (models.GRU, dict(hidden=0), "hidden", "positive integer"),
    ],
)
def test_bad_sizes_name_the_argument(factory, kwargs, argument, message):
    with pytest.raises(checks.ArgumentError, match=message) as e:
        factory((40, 1), 10, **kwargs, rngs=nnx.Rngs(0))
    assert e.value.argument == argument
