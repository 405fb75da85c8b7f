"""Small Flax NNX models. Each takes ``(in_shape, num_outputs)`` first so a task can size it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks


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
    """Two 3x3 convolutions with ReLU, global average pooling, a linear head. Input NHWC."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        features: Sequence[int] = (32, 64),
        rngs: nnx.Rngs,
    ):
        in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
        checks.positive_int("num_outputs", num_outputs)
        features = checks.int_sequence("features", features)
        if len(in_shape) != 3:
            raise checks.InvalidArgument(
                "in_shape", f"must be an image shape (H, W, C) for the CNN, got {in_shape}"
            )
        channels = [in_shape[-1], *features]
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), rngs=rngs)
                for a, b in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.head = nnx.Linear(channels[-1], num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, C]
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))
