r"""The worker axis as a *logical* axis: ``jax.lax``-style collectives that also work when the
hybrid lifting realises ``"workers"`` as two physical axes.

Under ``jdo.lift(fn, "hybrid", mesh=...)`` the W = D·k workers live k to a device: a
``shard_map`` over a device axis (size D) with a ``vmap`` over a local axis (size k) inside,
and worker ``device·k + local``. ``"workers"`` itself is then bound by neither, so a raw
``jax.lax`` collective on it fails (the lifting turns that error into one line pointing at
:mod:`jdo.comm`); the functions here, which :mod:`jdo.comm` and the clock use, lower each
collective to what it needs (the idea of DrJAX, Rush et al. 2024: logical clients
independent of the devices):

- all-reduce (``psum``/``pmean``/``pmax``/``pmin``): a local reduction over the device's k
  workers, then one cross-device all-reduce of ONE worker's value;
- all-gather: the device's ``[k, ...]`` block (free: vmap's all-gather is the batch itself),
  then a cross-device all-gather of the blocks;
- reduce-scatter: a local sum, then a cross-device reduce-scatter (a device's tile is exactly
  its k workers' blocks);
- ``ppermute``: pairs inside a device are a local gather; pairs that cross devices are grouped
  by device offset ``δ = (d_dst − d_src) mod D`` and each offset is one cross-device
  ``ppermute`` of only the rows that cross (a ring with k ≥ 2 workers per device: one row each
  way, so 2 rows of d values per device per step). A permutation in which devices send
  different numbers of rows at the same offset (not the case for the shift-invariant ring,
  exponential and one-peer exponential graphs) is padded to the largest.

The shard_map lifting on a two-level mesh (``lifting.nodes=m``: m nodes × k devices, one
worker per device) realises ``"workers"`` as the mesh axes ``(nodes, local)``
(``Realised.mesh_local``): all-reduces and ppermutes are ``jax.lax``'s own over both axes at
once (:func:`jdo.comm.hierarchical_mean` is the two-level all-reduce), while reduce-scatter and
all-gather are two-level (NCCL's and Horovod's hierarchical forms): a reduce-scatter inside the
node on the whole buffer then across nodes on 1/k of it, an all-gather across nodes then
inside, each in worker order, so the sharded parameter server's shards travel by level.

Everywhere else (``vmap``, ``shard_map``, ``pmap`` binding the axis itself) each function is
``jax.lax``'s own.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Realised:
    """The logical axis ``name`` realised as ``devices`` (a ``shard_map`` mesh axis of
    ``num_devices``) × ``local`` (a ``vmap`` axis of ``per_device`` workers): worker
    ``device · per_device + local``. With ``mesh_local`` both are mesh axes: the two-level
    ``(nodes, local)`` mesh of the shard_map lifting, one worker per device (collectives: see
    the module docstring)."""

    name: str
    devices: str
    local: str
    num_devices: int
    per_device: int
    mesh_local: bool = False

    @property
    def axes(self) -> tuple[str, str]:
        """The two physical axes, outer first."""
        return (self.devices, self.local)


_REALISED: contextvars.ContextVar[tuple[Realised, ...]] = contextvars.ContextVar(
    "jdo_realised", default=()
)


@contextlib.contextmanager
def realising(realised: Realised):
    """While tracing: collectives here on ``realised.name`` use its two physical axes."""
    token = _REALISED.set((*_REALISED.get(), realised))
    try:
        yield realised
    finally:
        _REALISED.reset(token)


def _bound(name) -> bool:
    try:
        jax.lax.axis_size(name)
    except NameError:
        return False
    return True


def realised(name) -> Realised | None:
    """How ``name`` is realised in the function being traced: a :class:`Realised` under the
    hybrid lifting, None where a lifting binds ``name`` itself (or nothing does)."""
    if not isinstance(name, str):
        return None
    found = [r for r in _REALISED.get() if r.name == name]
    if not found or _bound(name):  # an inner vmap/shard_map binding ``name`` wins
        return None
    return found[-1]


def levels(name) -> tuple[str, str] | None:
    """The ``(nodes, local)`` mesh axes of the worker axis ``name`` when the shard_map
    lifting realises it on a two-level mesh; None otherwise (a 1-D or hybrid worker axis)."""
    r = realised(name)
    return r.axes if r is not None and r.mesh_local else None


def agreed(index):
    """The branch index of control flow around collectives, which every worker must agree on
    (a collective in a branch needs all of them): under the hybrid lifting the first local
    worker's, unbatched, so the device runs ONE branch (a ``cond`` under ``vmap`` with a
    per-worker index runs every branch, and every branch's collectives); elsewhere
    ``index``."""
    active = [r for r in _REALISED.get() if not _bound(r.name)]
    if not active or active[-1].mesh_local:  # one worker per device: nothing is batched
        return index
    return jax.lax.all_gather(jnp.asarray(index), active[-1].local)[0]


def axis_index(name) -> jax.Array:
    """This worker's index on ``name`` (int32 scalar), like ``jax.lax.axis_index``."""
    r = realised(name)
    if r is None:
        return jax.lax.axis_index(name)
    device = jax.lax.axis_index(r.devices)
    return (device * r.per_device + jax.lax.axis_index(r.local)).astype(jnp.int32)


def axis_size(name) -> int:
    """The number of workers on ``name`` (a Python int), like ``jax.lax.axis_size``."""
    r = realised(name)
    return jax.lax.axis_size(name) if r is None else r.num_devices * r.per_device


def _reduce(local_op, device_op, x, name):
    r = realised(name)
    if r is None:
        return device_op(x, name)
    if r.mesh_local:
        return device_op(x, r.axes)
    return device_op(local_op(x, r.local), r.devices)


def psum(x, name):
    """``jax.lax.psum`` over the workers (hybrid: local sum, then a cross-device all-reduce)."""
    return _reduce(jax.lax.psum, jax.lax.psum, x, name)


def pmean(x, name):
    """``jax.lax.pmean`` over the workers."""
    if realised(name) is None:
        return jax.lax.pmean(x, name)
    n = axis_size(name)
    return jax.tree.map(lambda a: a / n, psum(x, name))


def pmax(x, name):
    """``jax.lax.pmax`` over the workers."""
    return _reduce(jax.lax.pmax, jax.lax.pmax, x, name)


def pmin(x, name):
    """``jax.lax.pmin`` over the workers."""
    return _reduce(jax.lax.pmin, jax.lax.pmin, x, name)


def all_gather(x, name):
    """``jax.lax.all_gather(x, name)`` (stacked on a new leading axis): every worker gets the
    ``[W, ...]`` values of all (hybrid: the device's block, then a cross-device all-gather)."""
    r = realised(name)
    if r is None:
        return jax.lax.all_gather(x, name)
    if r.mesh_local:
        return _gather_two_level(x, r)
    block = jax.lax.all_gather(x, r.local)  # [k, ...] per leaf, no data moved
    return jax.lax.all_gather(block, r.devices, tiled=True)


def psum_scatter(x, name):
    """``jax.lax.psum_scatter(x, name, scatter_dimension=0, tiled=True)``: worker i gets block
    i of the sum over workers of every leaf's leading axis (hybrid: a local sum, then a
    cross-device reduce-scatter whose tile is the device's k blocks)."""
    r = realised(name)
    if r is None:
        return jax.lax.psum_scatter(x, name, scatter_dimension=0, tiled=True)
    if r.mesh_local:
        return _scatter_two_level(x, r)
    tiles = jax.lax.psum_scatter(
        jax.lax.psum(x, r.local), r.devices, scatter_dimension=0, tiled=True
    )
    mine = jax.lax.axis_index(r.local)

    def pick(t):
        blocks = t.reshape(r.per_device, t.shape[0] // r.per_device, *t.shape[1:])
        return blocks[mine]

    return jax.tree.map(pick, tiles)


def _gather_two_level(x, r: Realised):
    """The two-level all-gather: across the nodes first (one worker's value each), then inside
    the node (m of them), reordered to worker order ``node·k + local``."""
    m, k = r.num_devices, r.per_device

    def leaf(a):
        across = jax.lax.all_gather(a, r.devices)  # [m, ...]: workers n'·k + l
        inside = jax.lax.all_gather(across, r.local)  # [k, m, ...]: [l', n']
        return inside.swapaxes(0, 1).reshape(m * k, *jnp.shape(a))

    return jax.tree.map(leaf, x)


def _scatter_two_level(x, r: Realised):
    """The two-level reduce-scatter: inside the node first (the whole buffer), then across
    the nodes (1/k of it); the blocks are reordered first so that worker ``(n, l)`` ends
    with block ``n·k + l``, as the flat reduce-scatter gives."""
    m, k = r.num_devices, r.per_device

    def leaf(a):
        rows = a.shape[0] // (m * k)
        blocks = a.reshape(m, k, rows, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)
        node = jax.lax.psum_scatter(blocks, r.local, scatter_dimension=0, tiled=True)
        return jax.lax.psum_scatter(node, r.devices, scatter_dimension=0, tiled=True)

    return jax.tree.map(leaf, x)


# ---- ppermute -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Offset:
    """The rows that cross to the device ``delta`` further on: per source device the local
    rows it sends (``send``, ``[D, r]``), per receiving device and local worker the slot of
    the received buffer it reads (``slot``, ``[D, k]``, −1: none), and the device pairs."""

    delta: int
    send: np.ndarray
    slot: np.ndarray
    pairs: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class _Plan:
    local: np.ndarray  # [D, k]: the same-device source of each worker, −1: none
    offsets: tuple[_Offset, ...]


@functools.lru_cache(maxsize=256)
def plan(perm: tuple[tuple[int, int], ...], num_devices: int, per_device: int) -> _Plan:
    """How the hybrid lifting runs ``ppermute(perm)`` over W = D·k workers: a local gather
    for the same-device pairs, one cross-device ``ppermute`` per device offset for the
    others (host side, static)."""
    D, k = num_devices, per_device
    local = np.full((D, k), -1)
    crossing: dict[int, list[tuple[int, int, int, int]]] = {}
    for src, dst in perm:
        (ds, ls), (dd, ld) = divmod(src, k), divmod(dst, k)
        if ds == dd:
            local[dd, ld] = ls
        else:
            crossing.setdefault((dd - ds) % D, []).append((ds, ls, dd, ld))
    offsets = []
    for delta in sorted(crossing):
        rows: dict[int, list[tuple[int, int]]] = {}
        for ds, ls, _, ld in crossing[delta]:
            rows.setdefault(ds, []).append((ls, ld))
        width = max(len(v) for v in rows.values())
        send, slot = np.zeros((D, width), np.int64), np.full((D, k), -1)
        for ds, sent in rows.items():
            for j, (ls, ld) in enumerate(sent):
                send[ds, j] = ls
                slot[(ds + delta) % D, ld] = j
        pairs = tuple((ds, (ds + delta) % D) for ds in sorted(rows))
        offsets.append(_Offset(delta, send, slot, pairs))
    return _Plan(local, tuple(offsets))


def _table(values: np.ndarray, device):
    """Row ``device`` of a ``[D, n]`` table: a static numpy row when every device's is the
    same (XLA then slices), else a traced lookup."""
    if (values == values[:1]).all():
        return values[0]
    return jnp.asarray(values)[device]


def _take(block, index):
    """``block[index]`` for ``index`` entries ≥ 0 and zeros where −1."""
    if isinstance(index, np.ndarray):
        if (index >= 0).all():
            return block[index]
        keep = np.asarray(index >= 0).reshape(-1, *([1] * (block.ndim - 1)))
        return jnp.where(keep, block[np.maximum(index, 0)], 0)
    keep = (index >= 0).reshape(-1, *([1] * (block.ndim - 1)))
    return jnp.where(keep, block[jnp.maximum(index, 0)], 0)


def _permute_block(block, p: _Plan, r: Realised, device):
    """The permuted ``[k, n]`` block of one device: local rows gathered, crossing rows
    received from one cross-device ``ppermute`` per offset."""
    out = _take(block, _table(p.local, device))
    for off in p.offsets:
        sent = block[_table(off.send, device)]  # [rows, n]: only the crossing rows
        got = jax.lax.ppermute(sent, r.devices, off.pairs)
        slot = _table(off.slot, device)
        out = jnp.where((slot >= 0)[:, None], _take(got, slot), out)
    return out


def ppermute(x, name, perm):
    """``jax.lax.ppermute(x, name, perm)``: worker ``dst`` gets ``x`` of ``src`` for every
    ``(src, dst)`` pair, zeros if none (hybrid: see the module docstring; the leaves of one
    dtype travel packed in one buffer, one cross-device message per offset)."""
    r = realised(name)
    if r is None or r.mesh_local:
        return jax.lax.ppermute(x, name if r is None else r.axes, perm)
    p = plan(tuple((int(s), int(d)) for s, d in perm), r.num_devices, r.per_device)
    device, mine = jax.lax.axis_index(r.devices), jax.lax.axis_index(r.local)
    leaves, treedef = jax.tree.flatten(x)
    out = [None] * len(leaves)
    for dtype in dict.fromkeys(jnp.result_type(a) for a in leaves):
        idx = [i for i, a in enumerate(leaves) if jnp.result_type(a) == dtype]
        blocks = [jax.lax.all_gather(leaves[i], r.local) for i in idx]  # [k, ...] each
        packed = jnp.concatenate([b.reshape(r.per_device, -1) for b in blocks], axis=1)
        moved = _permute_block(packed, p, r, device)[mine]  # this worker's row
        sizes = np.cumsum([int(np.prod(jnp.shape(leaves[i]))) for i in idx])[:-1]
        for i, part in zip(idx, jnp.split(moved, sizes), strict=True):
            out[i] = part.reshape(jnp.shape(leaves[i]))
    return jax.tree.unflatten(treedef, out)
