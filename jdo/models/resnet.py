"""ResNet-20/32/56 for 32x32 images: He et al. 2016's CIFAR-10 networks, in Flax NNX.

The normalisation layer is a choice because BatchNorm's running statistics do not fit jdo's
pure per-worker code (``apply(params, x)``, no mutable state); see :class:`ResNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks
from jdo.models.conv import Conv

NORMS = ("group", "batch")
SHORTCUTS = ("A", "B")
_PAD1 = ((1, 1), (1, 1))  # 3x3 convolutions pad 1 on every side (as the paper's Caffe/Torch code)


class BatchNorm(nnx.Module):
    """Batch normalisation with the statistics of the batch it is given, always.

    ``y = γ (x − μ_B) / sqrt(σ²_B + ε) + β``, with ``μ_B, σ²_B`` the mean and (biased) variance
    of ``x`` over the batch and spatial axes (N, H, W), per channel. There are no running
    averages: ``γ`` (``scale``) and ``β`` (``bias``) are the only variables, both parameters,
    so the layer is a pure function of ``(params, x)``. Applied by one worker to its own batch
    (the runner's per-worker loss), the statistics are that worker's own (Ioffe & Szegedy 2015's
    training-mode BatchNorm, per worker, never synchronised across workers).
    """

    def __init__(self, num_features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
        del rngs  # deterministic initialisation: γ = 1, β = 0
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, C]
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


def _norm(kind: str, channels: int, groups: int, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "batch":
        return BatchNorm(channels, rngs=rngs)
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)


def _conv(a: int, b: int, kernel: int, stride: int, impl: str, rngs: nnx.Rngs) -> Conv:
    return Conv(
        a,
        b,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=_PAD1 if kernel == 3 else "VALID",
        use_bias=False,
        kernel_init=nnx.initializers.he_normal(),  # He et al. 2015, as the paper
        impl=impl,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))`` with two 3x3 convolutions; the
    first has stride ``stride``. Shortcut when the shape changes: ``"A"`` subsamples ``x`` by
    ``stride`` and zero-pads the new channels, half on each side (parameter-free, the paper's
    option A); ``"B"`` is a 1x1 convolution with stride ``stride`` followed by a norm."""

    def __init__(self, a, b, stride, *, norm: str, groups: int, shortcut: str, conv: str, rngs):
        self.conv1 = _conv(a, b, 3, stride, conv, rngs)
        self.norm1 = _norm(norm, b, groups, rngs)
        self.conv2 = _conv(b, b, 3, 1, conv, rngs)
        self.norm2 = _norm(norm, b, groups, rngs)
        self.stride, self.pad = stride, b - a
        project = (stride != 1 or a != b) and shortcut == "B"
        self.project = _conv(a, b, 1, stride, conv, rngs) if project else None
        self.project_norm = _norm(norm, b, groups, rngs) if project else None

    def shortcut(self, x: jax.Array) -> jax.Array:
        if self.project is not None:
            return self.project_norm(self.project(x))
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :: self.stride, :: self.stride, :]
        low = self.pad // 2
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (low, self.pad - low)))

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, a]
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return jax.nn.relu(y + self.shortcut(x))


class ResNet(nnx.Module):
    """He et al. 2016's ResNet for 32x32 images (§4.2): depth ``6n + 2``.

    A 3x3 convolution to ``widths[0]`` channels, three stages of ``n`` basic blocks on 32x32,
    16x16 and 8x8 maps with ``widths = (16, 32, 64)`` channels (the first block of stages 2
    and 3 has stride 2), global average pooling and a linear head. Every convolution is
    followed by a normalisation layer; convolutions have no bias. With option-A shortcuts the
    parameter counts are the paper's: ResNet-20 269,722 (0.27M), ResNet-32 464,154 (0.46M),
    ResNet-56 853,018 (0.85M), for 10 classes.

    Normalisation (``norm``), what a per-worker step needs to be correct across workers:

    - ``"group"`` (default): GroupNorm (Wu & He 2018) with ``groups`` groups per layer. It
      normalises each image on its own, so it does not depend on the batch, its worker, or
      whether the model is training or evaluated: the averaged model is a proper model.
      Hsieh et al. 2020 ("The non-IID data quagmire") replaced BatchNorm by GroupNorm for
      decentralized training on skewed data for this reason; ``groups=2`` is jdo's default.
    - ``"batch"``: BatchNorm with per-worker statistics (:class:`BatchNorm`): each worker
      normalises with the mean and variance of the batch it is given, in training AND at
      evaluation (the evaluated test batch's own statistics; no running averages are kept,
      because jdo's models are pure ``apply(params, x)`` and hold no mutable state). So a
      worker's statistics depend on its own data (skewed under a non-IID partition), a
      test metric depends on the evaluation batch size (``trainer.eval_batch_size``; the last
      test batch is padded with copies of a test image, which enter its statistics), and
      ``trainer.batch_size=null`` (full local batch) includes the padding rows of a worker's
      shard. Only γ and β are parameters, and those are what is averaged or gossiped.

    Args:
      in_shape: ``(H, W, C)`` of one image (32x32x3 for CIFAR-10; other sizes work too).
      num_outputs: classes.
      depth: ``6n + 2``: 20, 32, 44, 56, 110, ...
      widths: the three stages' channels.
      norm: ``"group"`` or ``"batch"`` (above).
      groups: GroupNorm's groups; must divide every width.
      shortcut: ``"A"`` (zero-padding identity, no parameters; the paper's CIFAR choice) or
        ``"B"`` (1x1 convolution projections where the shape changes).
      conv: the convolutions' program (:class:`jdo.models.conv.Conv`): ``"xla"`` (default:
        XLA's convolution), ``"matmul"`` (one matmul over shifted views) or ``"auto"`` (matmul
        on the CPU); parameters and outputs do not depend on it. Measured on this project's
        2-core CPU, ResNet-20, 4 vmapped workers x 2 images: a gradient step 0.17 s (matmul)
        against 0.26 s (XLA), but its compile 7.0 s against 4.6 s and the forward pass's 5.7 s
        against 0.6 s; so XLA's by default, ``"matmul"`` for long CPU runs.
      rngs: the initialisation's random streams.

    References:
      He, Zhang, Ren, Sun. Deep residual learning for image recognition. CVPR 2016.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_outputs: int,
        *,
        depth: int = 20,
        widths: Sequence[int] = (16, 32, 64),
        norm: str = "group",
        groups: int = 2,
        shortcut: str = "A",
        conv: str = "xla",
        rngs: nnx.Rngs,
    ):
        in_shape = checks.int_sequence("in_shape", in_shape, allow_empty=False)
        checks.positive_int("num_outputs", num_outputs)
        checks.positive_int("depth", depth)
        widths = checks.int_sequence("widths", widths)
        checks.one_of("norm", norm, NORMS)
        checks.positive_int("groups", groups)
        checks.one_of("shortcut", shortcut, SHORTCUTS)
        if len(in_shape) != 3:
            raise checks.InvalidArgument(
                "in_shape", f"must be an image shape (H, W, C) for the ResNet, got {in_shape}"
            )
        if (depth - 2) % 6 or depth < 8:
            raise checks.InvalidArgument(
                "depth", f"must be 6n + 2 for n >= 1 (20, 32, 44, 56, 110), got {depth}"
            )
        if len(widths) != 3:
            raise checks.InvalidArgument("widths", f"must list 3 stage widths, got {widths}")
        if norm == "group" and any(w % groups for w in widths):
            raise checks.InvalidArgument(
                "groups", f"must divide every width {widths}, got {groups}"
            )
        n = (depth - 2) // 6
        self.conv = _conv(in_shape[-1], widths[0], 3, 1, conv, rngs)
        self.norm = _norm(norm, widths[0], groups, rngs)
        blocks, a = [], widths[0]
        for stage, b in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    BasicBlock(
                        a,
                        b,
                        stride,
                        norm=norm,
                        groups=groups,
                        shortcut=shortcut,
                        conv=conv,
                        rngs=rngs,
                    )
                )
                a = b
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(a, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, C]
        x = jax.nn.relu(self.norm(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))
