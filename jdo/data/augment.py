"""Image augmentation inside jit: a pure function of ``(x, key)`` applied by the per-worker loss
in training (:func:`jdo.data.make_loss`'s ``augment``), never at evaluation."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdo import checks


def crop_flip_draws(key: jax.Array, batch: int, crop_padding: int) -> tuple[jax.Array, ...]:
    """The random draws of :func:`random_crop_flip` for a batch of ``batch`` images:
    ``(offsets i32[B, 2], flips bool[B])``; offsets (row, column) uniform in
    ``[0, 2 crop_padding]``, each flip with probability 1/2."""
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * crop_padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    return offsets, flips


def random_crop_flip(
    x: jax.Array, key: jax.Array, *, crop_padding: int = 4, flip: bool = True
) -> jax.Array:
    """The standard CIFAR augmentation (He et al. 2016, §4.2): each image of ``x``
    (``f32[B, H, W, C]``) is zero-padded by ``crop_padding`` pixels on every side, an ``H x W``
    window is cut at a random offset, and with ``flip`` the result is mirrored left-right with
    probability 1/2. Every image draws its own offset and flip from ``key``
    (:func:`crop_flip_draws`); the same key gives the same crops and flips."""
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip needs images [B, H, W, C], got shape {x.shape}")
    b, h, w, c = x.shape
    offsets, flips = crop_flip_draws(key, b, crop_padding)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        cut = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
        x = jax.vmap(cut)(padded, offsets)
    if flip:
        x = jnp.where(flips[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def image_augment(crop_padding: int = 4, flip: bool = True) -> Callable:
    """``augment(x, key) -> x``: :func:`random_crop_flip` with these settings (what
    ``task.augment: {crop_padding: 4, flip: true}`` builds)."""
    checks.non_negative_int("crop_padding", crop_padding)
    if not isinstance(flip, bool):
        raise checks.WrongType("flip", f"must be true or false, got {flip!r}")

    def augment(x: jax.Array, key: jax.Array) -> jax.Array:
        return random_crop_flip(x, key, crop_padding=crop_padding, flip=flip)

    return augment
