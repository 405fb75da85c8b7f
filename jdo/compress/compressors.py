"""Compressors: what a worker puts on the wire instead of a dense array.

A compressor is a pure pair ``compress(x, key) -> payload`` / ``decompress(payload, like) -> x̂``
for ONE array. The payload is the pytree of arrays that travels (values and int32 indices, int8
codes and a norm, packed sign bits, a low-precision copy), never a dense array full of zeros, so
``collective_bytes`` of a step that moves payloads shows the saving. ``wire_bytes(like)`` is the
payload's size. ``unbiased`` says whether ``E[x̂] = x`` over the key.

Apply one to a pytree with :func:`compress_tree` / :func:`decompress_tree`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdo import checks

Payload = Any


def _like(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


@dataclasses.dataclass(frozen=True)
class Compressor:
    """Base class: the identity (the dense array is the payload)."""

    name: str = "identity"
    unbiased: bool = True

    def compress(self, x: jax.Array, key: jax.Array | None = None) -> Payload:
        del key
        return x

    def decompress(self, payload: Payload, like) -> jax.Array:
        del like
        return payload

    def wire_bytes(self, like) -> int:
        """Bytes of the payload for an array shaped like ``like``."""
        like = _like(like)
        shapes = jax.eval_shape(lambda x: self.compress(x, jax.random.key(0)), like)
        return int(sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(shapes)))

    @property
    def contractive(self) -> bool:
        """Whether ``E||x̂ − x||² <= (1 − δ)||x||²`` for some δ > 0 (the compressors error
        feedback and CHOCO assume). An unbiased compressor that scales up what it keeps is
        not: its error can exceed ``||x||²``."""
        return True

    def __call__(self, x, key=None):
        """``decompress(compress(x))``: what the receiver reconstructs."""
        return self.decompress(self.compress(x, key), _like(x))


def check_compressor(name: str, value, *, contractive_for: str | None = None) -> Compressor:
    """``value`` as a :class:`Compressor` (a factory's argument check); with
    ``contractive_for`` (who needs it), refuses a compressor that is not contractive."""
    if not isinstance(value, Compressor):
        raise checks.WrongType(
            name,
            f"must be a jdo.compress.Compressor (identity(), top_k(0.01), qsgd(), ...), "
            f"got {type(value).__name__}",
        )
    if contractive_for and not value.contractive:
        raise checks.InvalidArgument(
            name,
            f"must be contractive for {contractive_for}: {value.name} with scale=True "
            "multiplies what it keeps by d/k, so its expected error (d/k − 1)·||x||² exceeds "
            "||x||² and the error memory grows without bound; use scale=False",
        )
    return value


def identity() -> Compressor:
    """No compression (the dense array travels)."""
    return Compressor()


@dataclasses.dataclass(frozen=True)
class Cast(Compressor):
    """A low-precision copy: bf16, or fp8 e4m3 with a per-tensor scale (max |x| maps to 448)."""

    dtype: Any = jnp.bfloat16
    scaled: bool = False

    def compress(self, x, key=None):
        del key
        if not self.scaled:
            return x.astype(self.dtype)
        scale = jnp.max(jnp.abs(x)).astype(jnp.float32) / float(jnp.finfo(self.dtype).max)
        scale = jnp.where(scale > 0, scale, 1.0)
        return {"scale": scale, "q": (x / scale.astype(x.dtype)).astype(self.dtype)}

    def decompress(self, payload, like):
        like = _like(like)
        if not self.scaled:
            return payload.astype(like.dtype)
        return (payload["q"].astype(jnp.float32) * payload["scale"]).astype(like.dtype)


def bf16() -> Compressor:
    """Cast to bfloat16 (2 bytes a value; Horovod/DDP fp16-style compression)."""
    return Cast(name="bf16", unbiased=False, dtype=jnp.bfloat16)


def fp8() -> Compressor:
    """Cast to float8 e4m3 with a per-tensor scale (1 byte a value + 4)."""
    return Cast(name="fp8_e4m3", unbiased=False, dtype=jnp.float8_e4m3fn, scaled=True)


def _k(size: int, ratio: float | None, k: int | None) -> int:
    """The number of entries kept of ``size`` (at least 1, at most ``size``)."""
    if k is None:
        k = math.ceil(ratio * size)
    return max(1, min(int(k), size))


def _check_ratio_or_k(ratio, k) -> None:
    if (ratio is None) == (k is None):
        raise checks.InvalidArgument(
            "ratio", f"or k must be given, not both and not neither (got ratio={ratio!r}, k={k!r})"
        )
    if k is None:
        checks.number("ratio", ratio, low=0, high=1, low_open=True)
    else:
        checks.positive_int("k", k)


@dataclasses.dataclass(frozen=True)
class TopK(Compressor):
    """The k largest-magnitude entries: values + int32 indices (Aji & Heafield 2017; Lin et al.
    2018, "Deep Gradient Compression"). Biased: use with error feedback."""

    ratio: float | None = None
    k: int | None = None

    def compress(self, x, key=None):
        del key
        flat = x.reshape(-1)
        _, idx = jax.lax.top_k(jnp.abs(flat), _k(flat.size, self.ratio, self.k))
        return {"values": flat[idx], "indices": idx.astype(jnp.int32)}

    def decompress(self, payload, like):
        like = _like(like)
        flat = jnp.zeros(math.prod(like.shape), like.dtype)
        return flat.at[payload["indices"]].set(payload["values"]).reshape(like.shape)


def top_k(ratio: float | None = None, *, k: int | None = None) -> Compressor:
    """Top-k sparsification by magnitude (``ratio`` in (0, 1] of the entries, or exactly
    ``k``)."""
    _check_ratio_or_k(ratio, k)
    return TopK(name="top_k", unbiased=False, ratio=ratio, k=k)


@dataclasses.dataclass(frozen=True)
class RandK(TopK):
    """k entries chosen uniformly without replacement, scaled by d/k so ``E[x̂] = x``
    (Stich et al. 2018, "Sparsified SGD with Memory"). The indices come from the key; they
    still travel so the receiver needs no shared randomness."""

    scale: bool = True

    @property
    def contractive(self) -> bool:
        # Scaled by d/k the expected error is (d/k − 1)||x||² (99× ||x||² at 1%); unscaled it
        # is (1 − k/d)||x||².
        return not self.scale or self.ratio == 1

    def compress(self, x, key=None):
        if key is None:
            raise checks.InvalidArgument("key", "is required: random_k draws its indices from it")
        flat = x.reshape(-1)
        k = _k(flat.size, self.ratio, self.k)
        # the k largest of d uniform draws: a uniform k-subset, far cheaper than permuting d
        _, idx = jax.lax.top_k(jax.random.uniform(key, (flat.size,)), k)
        values = flat[idx] * (flat.size / k if self.scale else 1.0)
        return {"values": values.astype(x.dtype), "indices": idx.astype(jnp.int32)}


def random_k(ratio: float | None = None, *, k: int | None = None, scale: bool = True):
    """Random-k sparsification (``ratio`` in (0, 1] of the entries, or exactly ``k``);
    unbiased when ``scale`` (values times d/k), contractive (``E||x̂ − x||² = (1 − k/d)||x||²``,
    the form error feedback and CHOCO need: Stich et al. 2018) when not."""
    _check_ratio_or_k(ratio, k)
    if not isinstance(scale, bool):
        raise checks.WrongType("scale", f"must be true or false, got {scale!r}")
    return RandK(name="random_k", unbiased=scale, ratio=ratio, k=k, scale=scale)


@dataclasses.dataclass(frozen=True)
class QSGD(Compressor):
    """Stochastic uniform quantisation to ``levels`` levels of ``|x| / ||x||_2`` with the sign
    (Alistarh et al. 2017, "QSGD"): ``x̂ = ||x|| · sign(x) · ξ / s`` with ``ξ`` rounded up with
    probability equal to the remainder, so ``E[x̂] = x``. Payload: int8 codes (levels <= 127)
    plus the f32 norm."""

    levels: int = 127

    def compress(self, x, key=None):
        if key is None:
            raise checks.InvalidArgument("key", "is required: qsgd rounds at random")
        norm = jnp.linalg.norm(x.astype(jnp.float32).reshape(-1))
        scaled = jnp.abs(x).astype(jnp.float32) / jnp.where(norm > 0, norm, 1.0) * self.levels
        lower = jnp.floor(scaled)
        up = jax.random.uniform(key, x.shape) < (scaled - lower)
        codes = (jnp.sign(x) * (lower + up)).astype(jnp.int8)
        return {"norm": norm, "codes": codes}

    def decompress(self, payload, like):
        like = _like(like)
        values = payload["codes"].astype(jnp.float32) * payload["norm"] / self.levels
        return values.astype(like.dtype)


def qsgd(levels: int = 127) -> Compressor:
    """QSGD with ``levels`` quantisation levels (1..127; int8 codes)."""
    checks.integer("levels", levels)
    if not 1 <= levels <= 127:
        raise checks.InvalidArgument("levels", f"must be in 1..127 (int8 codes), got {levels}")
    return QSGD(name=f"qsgd{levels}", unbiased=True, levels=levels)


@dataclasses.dataclass(frozen=True)
class ScaledSign(Compressor):
    """``x̂ = (||x||_1 / d) · sign(x)`` (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD"):
    one bit a value (packed into uint8) plus an f32 scale. Biased: use with error feedback."""

    def compress(self, x, key=None):
        del key
        flat = x.reshape(-1)
        scale = jnp.mean(jnp.abs(flat)).astype(jnp.float32)
        return {"scale": scale, "bits": jnp.packbits(flat >= 0)}

    def decompress(self, payload, like):
        like = _like(like)
        size = math.prod(like.shape)
        signs = jnp.unpackbits(payload["bits"])[:size].astype(jnp.float32) * 2 - 1
        return (signs * payload["scale"]).reshape(like.shape).astype(like.dtype)


def scaled_sign() -> Compressor:
    """Scaled sign compression (1 bit a value)."""
    return ScaledSign(name="scaled_sign", unbiased=False)


# ----------------------------------------------------------------------------------------------
# Pytrees
# ----------------------------------------------------------------------------------------------


def _leaf_keys(key, tree):
    leaves = jax.tree.leaves(tree)
    if key is None:
        return [None] * len(leaves)
    return list(jax.random.split(key, len(leaves)))


def compress_tree(compressor: Compressor, tree, key=None):
    """Compresses every leaf (each with its own key); returns a list of payloads."""
    leaves = jax.tree.leaves(tree)
    return [compressor.compress(x, k) for x, k in zip(leaves, _leaf_keys(key, tree), strict=True)]


def decompress_tree(compressor: Compressor, payloads, like_tree):
    """Inverse of :func:`compress_tree` for a tree shaped like ``like_tree``."""
    leaves, treedef = jax.tree.flatten(like_tree)
    out = [compressor.decompress(p, _like(x)) for p, x in zip(payloads, leaves, strict=True)]
    return jax.tree.unflatten(treedef, out)


def tree_wire_bytes(compressor: Compressor, tree) -> int:
    """Payload bytes of a whole pytree."""
    return sum(compressor.wire_bytes(x) for x in jax.tree.leaves(tree))
