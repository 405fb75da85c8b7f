"""A 2-D convolution layer that can run as one matrix product (im2col) instead of XLA's
convolution: the same parameters as ``flax.nnx.Conv``, the same outputs, a faster program on
the CPU.

XLA's CPU convolution is slow for the small images and channel counts of jdo's models, and
slower still under the workers' ``vmap``, where every worker's different kernel makes it a
grouped convolution (``experiments/bench/results/worker_map.md``). A k×k convolution is also
``concat_ij(x_pad[:, i::s, j::s, :]) @ K.reshape(k·k·C_in, C_out)``: the k² shifted (and
strided) views of the padded input side by side, then one matmul, which XLA's CPU backend runs
well batched or not. On accelerators XLA's (cuDNN's) convolution is the better program.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jdo import checks

IMPLS = ("auto", "matmul", "xla")


def resolve_impl(impl: str) -> str:
    """``"auto"``: ``"matmul"`` on the CPU backend, else ``"xla"``; the others as given."""
    checks.one_of("conv", impl, IMPLS)
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv2d_matmul(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
) -> jax.Array:
    """``y[b, r, c, f] = Σ_{i,j,ch} x_pad[b, s₀r + i, s₁c + j, ch] · kernel[i, j, ch, f]``
    (cross-correlation, as ``lax.conv_general_dilated`` with NHWC/HWIO) as one matmul.

    Args:
      x: ``f32[B, H, W, C]``; kernel: ``f32[kh, kw, C, F]``.
      strides: ``(s₀, s₁)``; padding: ``((top, bottom), (left, right))`` zeros.

    Returns:
      ``f32[B, H_out, W_out, F]`` with ``H_out = (H + top + bottom − kh) // s₀ + 1`` (and W
      alike).
    """
    kh, kw, channels, features = kernel.shape
    (s0, s1), (pad_h, pad_w) = strides, padding
    x = jnp.pad(x, ((0, 0), tuple(pad_h), tuple(pad_w), (0, 0)))
    rows = (x.shape[1] - kh) // s0 + 1
    cols = (x.shape[2] - kw) // s1 + 1
    views = [
        x[:, i : i + s0 * (rows - 1) + 1 : s0, j : j + s1 * (cols - 1) + 1 : s1, :]
        for i in range(kh)
        for j in range(kw)
    ]  # in the kernel's (i, j, channel) order
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return patches @ kernel.reshape(kh * kw * channels, features)


class Conv(nnx.Conv):
    """``flax.nnx.Conv`` for 2-D NHWC inputs whose ``impl`` chooses the program: ``"xla"``
    (``nnx.Conv`` itself), ``"matmul"`` (:func:`conv2d_matmul`) or ``"auto"`` (matmul on the
    CPU, XLA's convolution elsewhere). Parameters (``kernel``, ``bias``) and their
    initialisation are ``nnx.Conv``'s, so a model's parameters do not depend on ``impl``.
    The matmul form covers what jdo's models use: zero padding (``"SAME"``, ``"VALID"``, an
    int or explicit pairs), strides, no dilation, no feature groups, no mask.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.impl = resolve_impl(impl)
        if self.impl == "matmul":
            unsupported = {
                "kernel_size": len(self.kernel_size) != 2,
                "input_dilation": self.input_dilation not in (None, 1, (1, 1)),
                "kernel_dilation": self.kernel_dilation not in (None, 1, (1, 1)),
                "feature_group_count": self.feature_group_count != 1,
                "mask": self.mask is not None,
                "padding": isinstance(self.padding, str) and self.padding not in ("SAME", "VALID"),
            }
            for name, bad in unsupported.items():
                if bad:
                    raise checks.InvalidArgument(
                        name, f"is not supported by conv=matmul (got {getattr(self, name)!r})"
                    )

    def _pairs(self, spatial: Sequence[int], strides: tuple[int, int]):
        if isinstance(self.padding, str):
            return jax.lax.padtype_to_pads(spatial, self.kernel_size, strides, self.padding)
        if isinstance(self.padding, int):
            return ((self.padding, self.padding),) * 2
        return tuple((p, p) if isinstance(p, int) else tuple(p) for p in self.padding)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: f32[B, H, W, C]
        if self.impl == "xla":
            return super().__call__(x)
        strides = self.strides if self.strides is not None else 1
        strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        padding = self._pairs(x.shape[1:3], strides)
        y = conv2d_matmul(x, self.kernel[...], strides=strides, padding=padding)
        return y if self.bias is None else y + self.bias[...]
