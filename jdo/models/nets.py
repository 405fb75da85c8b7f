"""Small Flax NNX models. Each takes ``(in_shape, num_outputs)`` first so a task can size it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks
from jdo.models.conv import Conv


class Linear(nnx.Module):
    """``y = x W (+ b)`` on the flattened input: linear/logistic regression."""

    def __init__(
        self, in_shape: Sequence[int], num_outputs: int, *, use_bias: bool = True, rngs: nnx.Rngs
    ):
        in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
        checks.positive_int("num_outputs", num_outputs)
        self.dense = nnx.Linear(
            math.prod(in_shape),
            num_outputs,
            use_bias=use_bias,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, *in_shape]
        return self.dense(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
    """Multi-layer perceptron with ReLU on the flattened input."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        hidden: Sequence[int] = (128, 128),
        rngs: nnx.Rngs,
    ):
        in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
        checks.positive_int("num_outputs", num_outputs)
        hidden = checks.int_sequence("hidden", hidden)
        sizes = [math.prod(in_shape), *hidden]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.head = nnx.Linear(sizes[-1], num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, *in_shape]
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class CNN(nnx.Module):
    """3x3 convolutions (``features`` channels) with ReLU, each followed by 2x2 max pooling
    when ``pool``, then global average pooling and a linear head. Input NHWC.

    ``pool=None`` (default) pools when the image is at least 16x16 (MNIST, CIFAR) and not on
    smaller ones (8x8 digits): without it, two 3x3 layers see 5x5 patches of a 28x28 digit
    before the global average, too little to tell digits apart (55% on mnist_small after 600
    steps, against 97% pooled with ``features=(32, 64, 128)``).

    ``conv`` chooses the convolutions' program (:class:`jdo.models.conv.Conv`): ``"auto"``
    (default) one matmul over shifted views on the CPU, XLA's convolution elsewhere;
    ``"matmul"``; ``"xla"``. The parameters and outputs do not depend on it."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        features: Sequence[int] = (32, 64),
        pool: bool | None = None,
        conv: str = "auto",
        rngs: nnx.Rngs,
    ):
        in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
        checks.positive_int("num_outputs", num_outputs)
        features = checks.int_sequence("features", features)
        if len(in_shape) != 3:
            raise checks.InvalidArgument(
                "in_shape", f"must be an image shape (H, W, C) for the CNN, got {in_shape}"
            )
        if pool is not None and not isinstance(pool, bool):
            raise checks.WrongType("pool", f"must be true, false or null, got {pool!r}")
        self.pool = min(in_shape[:2]) >= 16 if pool is None else pool
        channels = [in_shape[-1], *features]
        self.convs = nnx.List(
            [
                Conv(a, b, kernel_size=(3, 3), impl=conv, rngs=rngs)
                for a, b in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.head = nnx.Linear(channels[-1], num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, C]
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
            if self.pool:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.head(jnp.mean(x, axis=(1, 2)))
