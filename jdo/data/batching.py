"""One worker's batch from its part of the data: pure, deterministic in the key."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_batch(x, y, count, key, batch_size: int | None) -> dict[str, jax.Array]:
    """Draws a batch from one worker's padded data.

    Args:
      x, y: this worker's padded inputs ``[n_max, ...]`` and targets ``[n_max, ...]``.
      count: number of valid rows (int32 scalar); rows ``>= count`` are padding.
      key: PRNG key; derive it from (seed, worker, step) for reproducible data order.
      batch_size: rows drawn uniformly with replacement; ``None`` for the whole local data
        (full-batch gradients), padding masked out.

    Returns:
      ``{"x": [B, ...], "y": [B, ...], "weight": f32[B]}``; losses are weighted means.
    """
    if batch_size is None:
        weight = (jnp.arange(x.shape[0]) < count).astype(jnp.float32)
        return {"x": x, "y": y, "weight": weight}
    idx = jax.random.randint(key, (batch_size,), 0, count)
    return {"x": x[idx], "y": y[idx], "weight": jnp.ones((batch_size,), jnp.float32)}
