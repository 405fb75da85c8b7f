"""The worker axis: the one name every per-worker function communicates over, and the one
typing helper every layer needs to keep per-worker values per-worker under ``shard_map``
(``import jdo`` reads this module: JAX is imported on first use, not here)."""

WORKERS = "workers"
NODES, LOCAL = "nodes", "local"  # the two levels of a two-level worker mesh (nodes, local)


def _varying_axes(aval) -> frozenset:
    """The manual mesh axes an abstract value varies over (``.vma``; jax 0.10 keeps it in
    ``.manual_axis_type.varying``)."""
    if hasattr(aval, "vma"):
        return frozenset(aval.vma)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", ()))


def varying(x, axis_name: str = WORKERS):
    """Types a pytree as varying over ``axis_name`` under ``shard_map`` (``lax.pcast``), so a
    loop carry that enters per-worker leaves per-worker even when its new value came from an
    all-reduce (which shard_map types as invariant). Moves no data; a no-op outside
    ``shard_map`` (``vmap`` tracks no such types)."""
    import jax

    if axis_name not in jax.sharding.get_abstract_mesh().manual_axes:
        return x

    def one(a):
        if axis_name in _varying_axes(jax.typeof(a)):
            return a
        return jax.lax.pcast(a, axis_name, to="varying")

    return jax.tree.map(one, x)
