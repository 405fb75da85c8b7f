"""Sequence models (Flax NNX) on inputs ``[B, T, C]`` (batch, time, channels).

:class:`CNN1D` and :class:`GRU` are the reference models of MNIST-1D (Greydanus 2020,
"Scaling down Deep Learning", arXiv:2011.14439; ``notebooks/models.py`` of
github.com/greydanus/mnist1d), with the same layers and parameter counts (5,210 and 5,134 on
``[40, 1]`` inputs, 10 classes). :class:`Transformer` is a small pre-LN encoder classifier.
Each takes ``(in_shape, num_outputs)`` first so a task can size it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks


def _sequence_shape(model: str, in_shape) -> tuple[int, int]:
    in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
    if len(in_shape) != 2:
        raise checks.InvalidArgument(
            "in_shape", f"must be a sequence shape (T, C) for the {model}, got {in_shape}"
        )
    return in_shape[0], in_shape[1]


def conv1d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``y[b, t, f] = Σ_{i, c} x_pad[b, s·t + i, c] · kernel[i, c, f]``: a 1-D convolution
    (cross-correlation, as PyTorch's ``Conv1d`` and ``lax.conv``) with zero padding on both
    sides, as k strided slices and one einsum. On CPU this is ~10× faster than XLA's
    convolution for these small shapes (its gradient most of all), and it is the same on GPUs.

    Args:
      x: ``f32[B, T, C]``; kernel: ``f32[k, C, F]``.

    Returns:
      ``f32[B, (T + 2·padding − k) // stride + 1, F]``.
    """
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), (padding, padding), (0, 0)))
    n = (x.shape[1] - k) // stride + 1
    span = stride * (n - 1) + 1
    patches = jnp.stack([x[:, i : i + span : stride] for i in range(k)], axis=2)  # [B, n, k, C]
    return jnp.einsum("bnkc,kcf->bnf", patches, kernel)


class Conv1D(nnx.Module):
    """A 1-D convolution layer with bias (:func:`conv1d`); its kernel ``[k, C, F]`` and
    initialisation (LeCun normal, zero bias) are those of ``nnx.Conv``."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *, rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, T, C] -> f32[B, T', F]
        return conv1d(x, self.kernel[...], self.stride, padding=1) + self.bias[...]


class CNN1D(nnx.Module):
    """1-D convolutions (stride 2, padding 1) with ReLU, flattened into a linear head.

    The MNIST-1D reference CNN (``ConvBase``): three convolutions of 25 channels with kernels
    5, 3, 3, so a length-40 signal becomes 19, 10, then 5 steps and the head reads
    5 × 25 = 125 features. Input ``[B, T, C]``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        features: Sequence[int] = (25, 25, 25),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        stride: int = 2,
        rngs: nnx.Rngs,
    ):
        length, channels = _sequence_shape("CNN1D", in_shape)
        checks.positive_int("num_outputs", num_outputs)
        features = checks.int_sequence("features", features, allow_empty=False)
        kernel_sizes = checks.int_sequence("kernel_sizes", kernel_sizes, allow_empty=False)
        checks.positive_int("stride", stride)
        if len(kernel_sizes) != len(features):
            raise checks.InvalidArgument(
                "kernel_sizes",
                f"needs one size per layer of features {features}, got {kernel_sizes}",
            )
        sizes = [channels, *features]
        self.convs = nnx.List()
        for a, b, k in zip(sizes[:-1], sizes[1:], kernel_sizes, strict=True):
            length = (length + 2 - k) // stride + 1  # padding 1 on each side
            if length < 1:
                raise checks.InvalidArgument(
                    "in_shape", f"is too short for kernels {kernel_sizes} at stride {stride}"
                )
            self.convs.append(Conv1D(a, b, k, stride, rngs=rngs))
        self.head = nnx.Linear(length * sizes[-1], num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, T, C]
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(x.reshape(x.shape[0], -1))


def _uniform(bound: float):
    """PyTorch's recurrent-layer initialisation: every weight and bias U(−bound, bound)."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def gru_scan(xi: jax.Array, w_h: jax.Array, b_h: jax.Array, reverse: bool = False) -> jax.Array:
    r"""Runs a GRU over time from ``h_0 = 0`` given the input projections ``xi``.

    With ``xi_t = W_i x_t + b_i = [a_r, a_z, a_n]`` and ``W_h h + b_h = [g_r, g_z, g_n]``
    (PyTorch's gate order and biases):

    .. math::
        r = σ(a_r + g_r),\quad z = σ(a_z + g_z),\quad n = \tanh(a_n + r ⊙ g_n),\quad
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}.

    Args:
      xi: ``f32[B, T, 3H]``; w_h: ``f32[H, 3H]``; b_h: ``f32[3H]``.
      reverse: run from the last step to the first (output still indexed by t).

    Returns:
      ``h_t`` for every t: ``f32[B, T, H]``.
    """
    hidden = w_h.shape[0]

    def step(h, xi_t):  # h: f32[B, H], xi_t: f32[B, 3H]
        a_r, a_z, a_n = jnp.split(xi_t, 3, axis=-1)
        g_r, g_z, g_n = jnp.split(h @ w_h + b_h, 3, axis=-1)
        r, z = jax.nn.sigmoid(a_r + g_r), jax.nn.sigmoid(a_z + g_z)
        h = (1 - z) * jnp.tanh(a_n + r * g_n) + z * h
        return h, h

    h0 = jnp.zeros_like(xi[:, 0, :hidden])  # from xi: varying over the same axes (shard_map)
    _, hs = jax.lax.scan(step, h0, jnp.swapaxes(xi, 0, 1), reverse=reverse)
    return jnp.swapaxes(hs, 0, 1)


class GRUDirection(nnx.Module):
    """One direction of a GRU layer, parameterised as PyTorch's ``nn.GRU`` (separate input
    and hidden biases: ``3H·C + 3H·H + 6H`` parameters)."""

    def __init__(self, in_features: int, hidden: int, *, reverse: bool, rngs: nnx.Rngs):
        init = _uniform(1 / math.sqrt(hidden))
        self.reverse = reverse
        self.inputs = nnx.Linear(
            in_features, 3 * hidden, kernel_init=init, bias_init=init, rngs=rngs
        )
        self.hidden = nnx.Linear(hidden, 3 * hidden, kernel_init=init, bias_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, T, C] -> f32[B, T, H]
        xi = self.inputs(x)  # every step's input projection at once, outside the scan
        return gru_scan(xi, self.hidden.kernel[...], self.hidden.bias[...], self.reverse)


class GRU(nnx.Module):
    """A (bidirectional) GRU whose states at every step are flattened into a linear head.

    The MNIST-1D reference GRU (``GRUBase``): one bidirectional layer of 6 units on a
    ``[40, 1]`` signal, so the head reads 40 × 2 × 6 = 480 features. Input ``[B, T, C]``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        hidden: int = 6,
        bidirectional: bool = True,
        rngs: nnx.Rngs,
    ):
        length, channels = _sequence_shape("GRU", in_shape)
        checks.positive_int("num_outputs", num_outputs)
        checks.positive_int("hidden", hidden)
        if not isinstance(bidirectional, bool):
            raise checks.WrongType("bidirectional", f"must be true or false, got {bidirectional!r}")
        directions = (False, True) if bidirectional else (False,)
        self.directions = nnx.List(
            [GRUDirection(channels, hidden, reverse=r, rngs=rngs) for r in directions]
        )
        self.head = nnx.Linear(length * hidden * len(directions), num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, T, C]
        hs = jnp.concatenate([d(x) for d in self.directions], axis=-1)  # f32[B, T, D·H]
        return self.head(hs.reshape(hs.shape[0], -1))


class EncoderBlock(nnx.Module):
    """Pre-LN Transformer block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            heads, dim, decode=False, keep_rngs=False, rngs=rngs
        )
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.down = nnx.Linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, N, dim]
        x = x + self.attention(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
    """A small Transformer encoder classifier (ViT-style, for sequences).

    The sequence is cut into ``T / patch_size`` patches, each embedded linearly, plus a
    learned positional embedding; ``depth`` pre-LN blocks (multi-head self-attention, MLP);
    a final LayerNorm, mean pooling over the patches, a linear head. Parameters, with
    ``p`` = patch_size, ``N = T/p`` patches, ``d`` = dim, ``m`` = mlp_dim, ``K`` outputs:
    ``(p·C·d + d) + N·d + depth·(4d² + 4d + 2d·m + m + d + 4d) + 2d + (d·K + K)``.
    Input ``[B, T, C]``.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        patch_size: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        length, channels = _sequence_shape("Transformer", in_shape)
        checks.positive_int("num_outputs", num_outputs)
        for name, value in (
            ("patch_size", patch_size),
            ("dim", dim),
            ("depth", depth),
            ("heads", heads),
            ("mlp_dim", mlp_dim),
        ):
            checks.positive_int(name, value)
        if length % patch_size:
            raise checks.InvalidArgument(
                "patch_size", f"must divide the sequence length {length}, got {patch_size}"
            )
        if dim % heads:
            raise checks.InvalidArgument("heads", f"must divide dim {dim}, got {heads}")
        self.patch_size = patch_size
        self.embed = nnx.Linear(patch_size * channels, dim, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        self.position = nnx.Param(init(rngs.params(), (length // patch_size, dim)))
        self.blocks = nnx.List([EncoderBlock(dim, heads, mlp_dim, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, T, C]
        batch, length, channels = x.shape
        patches = x.reshape(batch, length // self.patch_size, self.patch_size * channels)
        h = self.embed(patches) + self.position[...]  # f32[B, N, dim]
        for block in self.blocks:
            h = block(h)
        return self.head(jnp.mean(self.norm(h), axis=1))
