"""Communication cost read from the program XLA runs.

``collective_bytes(fn, *args)`` compiles ``fn`` and returns, by collective kind, the bytes ONE
worker contributes per call: the size of each collective's operands on one device (its shard
of an all-gather, its full buffer for an all-reduce or a reduce-scatter, what it forwards in a
collective-permute). Async pairs count once (``*-start``; ``*-done`` is ignored). Collectives
inside a ``while`` loop (``lax.scan``, ``fori_loop``) are multiplied by the loop's trip count.
Of a ``conditional`` (``lax.cond``/``switch``) the most expensive branch counts, or with
``conditionals="min"`` the cheapest: a periodic algorithm (local SGD, DiLoCo) sends the first
on a communicating step and the second on the others. XLA may fuse the per-leaf all-reduces of
a gradient pytree into one combined op; the byte total does not change, so count bytes, never
ops. A collective in which every worker only talks to itself (all groups of one worker, a
permutation of self-pairs, as any collective over a single worker is) counts 0: self-messages
are not traffic.

A ``vmap``-lifted step runs all workers on one device and compiles to no collective at all.
:func:`worker_bytes` therefore lowers a per-worker function under ``shard_map`` on an
abstract mesh of W workers (no devices needed) and reads the HLO before optimisation: the
bytes it would send with one worker per device (tests check it against the compiled count).

For pricing, :func:`hlo_collective_ops` / :func:`collective_ops` / :func:`worker_ops` list the
same collectives one entry per operation (:class:`CollectiveOp`: kind, nccl-tests' buffer size,
group size from the replica groups, count from loop trip counts); ``jdo.system`` turns them
into seconds and wire bytes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jdo import checks
from jdo._axis import LOCAL, NODES, WORKERS
from jdo.lifting import InAxes, normalize_in_axes, shard_map_workers, worker_spec

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

_DTYPE_BYTES = {
    "pred": 1,
    "s2": 0.25,
    "u2": 0.25,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "s32": 4,
    "u32": 4,
    "s64": 8,
    "u64": 8,
    "f16": 2,
    "bf16": 2,
    "f32": 4,
    "f64": 8,
    "c64": 8,
    "c128": 16,
    "f4e2m1fn": 0.5,
    "f8e8m0fnu": 1,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\)\s*->\s*.*)?\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(r"\b(?:body|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_GROUPS = re.compile(r"\breplica_groups=(\{\{[^=]*?\}\}|\{\}|\[\d+,\d+\]<=\[[\d,]+\])")
_PAIRS = re.compile(r"\bsource_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string such as ``f32[4,8]{1,0}`` or ``(f32[2], bf16[3,3])``."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype.startswith("f8"):
            size = 1
        elif dtype in _DTYPE_BYTES:
            size = _DTYPE_BYTES[dtype]
        else:  # token[], opaque[]: no payload
            continue
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(math.ceil(total))


def _close(text: str, depth: int = 0) -> int:
    """Index of the parenthesis that brings ``depth`` back to zero (or ``len(text)``)."""
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return len(text)


def _split_shape_and_op(rhs: str) -> tuple[str, str, str, str]:
    """``'f32[2]{0} all-reduce(%a), attrs'`` -> (shape, opcode, operands, attrs)."""
    if rhs.startswith("("):  # tuple shape: up to its matching parenthesis
        end = _close(rhs)
        shape, rest = rhs[: end + 1], rhs[end + 1 :].lstrip()
    else:
        shape, _, rest = rhs.partition(" ")
    opcode, _, rest = rest.partition("(")
    end = _close(rest, depth=1)
    return shape, opcode.strip(), rest[:end], rest[end + 1 :]


def _operand_names(operands: str) -> list[str]:
    if "%" in operands:
        return re.findall(r"%([\w.\-]+)", operands)
    return [tok.split()[-1] for tok in operands.split(",") if tok.strip()]


def _sends_nothing(attrs: str) -> bool:
    """A collective in which every worker only talks to itself (groups of one worker, a
    permutation of self-pairs: e.g. any collective over a single worker) moves no data."""
    pairs = _PAIRS.search(attrs)
    if pairs:
        found = re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))
        return bool(found) and all(a == b for a, b in found)
    groups = _GROUPS.search(attrs)
    if not groups or groups.group(1) == "{}":  # {}: one group of every device
        return False
    text = groups.group(1)
    if text.startswith("["):  # iota form [num_groups,group_size]<=[...]
        return int(text[1:].split(",")[1].split("]")[0]) == 1
    return all("," not in g for g in re.findall(r"\{([\d,]*)\}", text[1:-1]))


def _trip_count(computations, attrs: str) -> int | None:
    """A while loop's trip count: XLA's ``known_trip_count`` (compiled HLO), else a condition
    ``i < N`` on a constant N (HLO before optimisation; JAX's loops count from 0)."""
    known = _TRIP.search(attrs)
    if known:
        return int(known.group(1))
    cond = re.search(r"\bcondition=%?([\w.\-]+)", attrs)
    instrs = computations.get(cond.group(1), []) if cond else []
    constants = {name: ops for name, _, op, ops, _ in instrs if op == "constant"}
    for _, _, op, operands, rest in instrs:
        names = _operand_names(operands)
        if op == "compare" and "direction=LT" in rest and len(names) == 2 and names[1] in constants:
            return int(constants[names[1]])
    return None


def _loop_times(computations, opcode: str, attrs: str) -> int:
    """How many times an instruction runs its callees: a ``while`` loop's trip count (1, with
    a warning, when unknown), else once."""
    if opcode != "while":
        return 1
    times = _trip_count(computations, attrs)
    if times is None:
        warnings.warn(
            "a while loop with an unknown trip count: its collectives are counted once",
            stacklevel=4,
        )
        return 1
    return times


def _parse_module(hlo_text: str):
    """HLO module text -> (instructions by computation, the ENTRY's name, shapes by name).

    Each instruction is ``(name, shape, opcode, operands, attrs)``."""
    computations: dict[str, list[tuple[str, str, str, str, str]]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        instr = _INSTR.match(line)
        if instr:
            name, rhs = instr.groups()
            computations[current].append((name, *_split_shape_and_op(rhs)))
    if entry is None:
        raise checks.InvalidArgument("hlo_text", "holds no ENTRY computation")
    shapes = {name: shape for instrs in computations.values() for name, shape, *_ in instrs}
    return computations, entry, shapes


def hlo_collective_bytes(hlo_text: str, conditionals: str = "max") -> dict[str, int]:
    """Bytes one device contributes per call, by collective kind, from HLO module text.

    ``conditionals="max"`` charges each ``conditional`` its most expensive branch (a step that
    communicates); ``"min"`` its cheapest (a step that does not, for periodic algorithms).
    """
    checks.one_of("conditionals", conditionals, ("max", "min"))
    pick = max if conditionals == "max" else min
    computations, entry, shapes = _parse_module(hlo_text)

    memo: dict[str, np.ndarray] = {}

    def cost(comp: str) -> np.ndarray:
        if comp in memo:
            return memo[comp]
        memo[comp] = np.zeros(len(KINDS))  # guards against (impossible) recursion
        total = np.zeros(len(KINDS))
        for _, _, opcode, operands, attrs in computations.get(comp, []):
            base = opcode.removesuffix("-start")
            if base in KINDS and not _sends_nothing(attrs):
                total[KINDS.index(base)] += sum(
                    shape_bytes(shapes.get(o, "")) for o in _operand_names(operands)
                )
            branches = _BRANCHES.search(attrs)
            if branches:
                costs = [cost(b.strip().lstrip("%")) for b in branches.group(1).split(",")]
                total += pick(costs, key=lambda c: c.sum())
            times = _loop_times(computations, opcode, attrs)
            for callee in _CALLS.findall(attrs):
                total += cost(callee) * times
        memo[comp] = total
        return total

    return {kind: int(b) for kind, b in zip(KINDS, cost(entry), strict=True)}


def collective_bytes(fn: Callable, *args, **kwargs) -> dict[str, int]:
    """Bytes one worker sends per call of ``fn(*args, **kwargs)``, by collective kind.

    Args:
      fn: a function already lifted over the workers (``jax.jit`` of a ``shard_map``, a
        ``pmap``); wrapped in ``jax.jit`` if it has no ``lower``.
      *args, **kwargs: example arguments (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      ``{"all-reduce": b, "all-gather": b, "reduce-scatter": b, "collective-permute": b,
      "all-to-all": b}``, parsed from the compiled HLO.

    Example: the all-reduce of a float32 gradient with P parameters is ``4 * P`` bytes.
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return hlo_collective_bytes(jitted.lower(*args, **kwargs).compile().as_text())


def worker_bytes(
    fn: Callable,
    num_workers: int,
    *args,
    in_axes: InAxes = 0,
    axis_name: str = WORKERS,
    platform: str = "cpu",
    conditionals: str = "max",
) -> dict[str, int]:
    """Bytes one worker sends per call of the per-worker ``fn``, with one worker per device.

    ``fn`` is written for one worker (collectives on ``axis_name``). ``args`` are ONE worker's
    values (arrays or ``ShapeDtypeStruct``); arguments whose ``in_axes`` entry is ``None`` are
    shared by all workers. Nothing runs and no device is needed: ``fn`` is lowered under
    ``shard_map`` on an abstract mesh of ``num_workers`` and the HLO is parsed before
    optimisation, so the figure is the same whether the run itself uses ``vmap`` or
    ``shard_map``.
    """
    hlo = worker_hlo(
        fn, num_workers, *args, in_axes=in_axes, axis_name=axis_name, platform=platform
    )
    return hlo_collective_bytes(hlo, conditionals)


def worker_hlo(
    fn: Callable,
    num_workers: int,
    *args,
    in_axes: InAxes = 0,
    axis_name: str = WORKERS,
    platform: str = "cpu",
    nodes: int = 1,
) -> str:
    """HLO text (before optimisation) of the per-worker ``fn`` under ``shard_map`` on an
    abstract mesh of ``num_workers`` (see :func:`worker_bytes`); two-level ``(nodes, local)``
    with ``nodes > 1``. Lower once, read it with :func:`hlo_collective_ops` under several
    ``conditionals``."""
    axes = normalize_in_axes(in_axes, len(args))
    if nodes == 1:
        shape, names = (num_workers,), (axis_name,)
    else:
        shape, names = (nodes, num_workers // nodes), (NODES, LOCAL)
    mesh = AbstractMesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape))
    spec_of_workers = worker_spec(mesh, axis_name)

    def global_spec(x, axis):
        x = jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x))
        shape = x.shape if axis is None else (num_workers, *x.shape)
        spec = P() if axis is None else spec_of_workers
        return jax.ShapeDtypeStruct(shape, x.dtype, sharding=NamedSharding(mesh, spec))

    specs = [
        jax.tree.map(lambda x, a=a: global_spec(x, a), arg)
        for arg, a in zip(args, axes, strict=True)
    ]
    lifted = shard_map_workers(fn, mesh, axes, axis_name)
    lowered = jax.jit(lifted).trace(*specs).lower(lowering_platforms=(platform,))
    return lowered.as_text(dialect="hlo")


# ---- one entry per collective operation ----------------------------------------------------

_DEVICES = re.compile(r"\b(num_partitions|replica_count)=(\d+)")


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective operation of a program, as a cost model prices it.

    Attributes:
      kind: one of :data:`KINDS`.
      nbytes: the buffer size in nccl-tests' convention: an all-reduce's buffer, an
        all-gather's OUTPUT (operand × group size), a reduce-scatter's INPUT, an all-to-all's
        buffer, a collective-permute's message (one device's operands in the other kinds).
      group_size: workers per replica group (``replica_groups={}``: every device); for a
        collective-permute, the number of distinct devices in its (non-self) pairs.
      count: times it runs per call (loop trip counts multiplied through).
      groups: its device groups (a collective-permute: its non-self ``(source, target)``
        pairs); None when unknown. Not part of equality.
    """

    kind: str
    nbytes: int
    group_size: int
    count: int = 1
    groups: tuple[tuple[int, ...], ...] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @property
    def payload_bytes(self) -> int:
        """Operand bytes one worker contributes per run (what :func:`collective_bytes`
        counts): an all-gather's shard ``nbytes / group_size``, else ``nbytes``."""
        return self.nbytes // self.group_size if self.kind == "all-gather" else self.nbytes


def hlo_num_devices(hlo_text: str) -> int | None:
    """Devices of an HLO module from its header: ``num_partitions × replica_count`` (None when
    the header names neither)."""
    header = next((line for line in hlo_text.splitlines() if line.startswith("HloModule")), "")
    found = dict(_DEVICES.findall(header))
    if not found:
        return None
    return int(found.get("num_partitions", 1)) * int(found.get("replica_count", 1))


_IOTA = re.compile(r"\breplica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")


def _groups(attrs: str, num_devices: int | None) -> tuple[tuple[int, ...], ...]:
    """The device groups of a collective: its replica groups (``{}`` or none: every device;
    the iota form ``[g,s]<=[dims]T(perm)`` expanded), or a permute's non-self pairs."""
    pairs = _PAIRS.search(attrs)
    if pairs:
        found = re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))
        return tuple((int(a), int(b)) for a, b in found if a != b)
    iota = _IOTA.search(attrs)
    if iota:
        rows, cols, dims, perm = iota.groups()
        ids = np.arange(math.prod(int(d) for d in dims.split(","))).reshape(
            [int(d) for d in dims.split(",")]
        )
        if perm:
            ids = ids.transpose([int(p) for p in perm.split(",")])
        return tuple(tuple(int(i) for i in row) for row in ids.reshape(int(rows), int(cols)))
    groups = _GROUPS.search(attrs)
    if not groups or groups.group(1) == "{}":  # one group of every device
        if num_devices is None:
            raise checks.InvalidArgument(
                "num_devices",
                "is needed: a collective spans every device and the HLO header names no "
                "num_partitions or replica_count",
            )
        return (tuple(range(num_devices)),)
    found = re.findall(r"\{([\d,]*)\}", groups.group(1)[1:-1])
    return tuple(tuple(int(i) for i in g.split(",") if i) for g in found)


def _group_size(kind: str, groups) -> int:
    if kind == "collective-permute":  # distinct devices of its pairs
        return len({d for pair in groups for d in pair})
    return max(len(g) for g in groups)


def hlo_collective_ops(
    hlo_text: str, conditionals: str = "max", num_devices: int | None = None
) -> list[CollectiveOp]:
    """The collective operations of an HLO module, one entry per operation, in program order.

    Counted as :func:`hlo_collective_bytes` counts bytes: async pairs once, collectives in a
    ``while`` loop ``count`` times its trip count, a ``conditional``'s most expensive branch
    (``"min"``: its cheapest; by operand bytes, the same choice as the byte count), collectives
    in which every worker only talks to itself omitted. So summing ``payload_bytes * count``
    by kind gives :func:`hlo_collective_bytes`.

    Args:
      hlo_text: HLO module text (``compiled.as_text()`` or a lowering's ``as_text("hlo")``).
      conditionals: ``"max"`` or ``"min"``, as for :func:`hlo_collective_bytes`.
      num_devices: devices of the program, for groups written ``{}`` (all devices); None reads
        it from the module header (``num_partitions`` × ``replica_count``).
    """
    checks.one_of("conditionals", conditionals, ("max", "min"))
    pick = max if conditionals == "max" else min
    computations, entry, shapes = _parse_module(hlo_text)
    if num_devices is None:
        num_devices = hlo_num_devices(hlo_text)
    payload = lambda ops: sum(op.payload_bytes * op.count for op in ops)
    memo: dict[str, list[CollectiveOp]] = {}

    def ops_of(comp: str) -> list[CollectiveOp]:
        if comp in memo:
            return memo[comp]
        memo[comp] = []  # guards against (impossible) recursion
        found: list[CollectiveOp] = []
        for _, _, opcode, operands, attrs in computations.get(comp, []):
            kind = opcode.removesuffix("-start")
            if kind in KINDS and not _sends_nothing(attrs):
                operand = sum(shape_bytes(shapes.get(o, "")) for o in _operand_names(operands))
                groups = _groups(attrs, num_devices)
                size = _group_size(kind, groups)
                nbytes = operand * size if kind == "all-gather" else operand
                found.append(CollectiveOp(kind, nbytes, size, groups=groups))
            branches = _BRANCHES.search(attrs)
            if branches:
                names = [b.strip().lstrip("%") for b in branches.group(1).split(",")]
                found += pick([ops_of(b) for b in names], key=payload)
            times = _loop_times(computations, opcode, attrs)
            for callee in _CALLS.findall(attrs):
                found += [dataclasses.replace(op, count=op.count * times) for op in ops_of(callee)]
        memo[comp] = found
        return found

    return list(ops_of(entry))


def collective_ops(fn: Callable, *args, **kwargs) -> list[CollectiveOp]:
    """The collective operations of one call of ``fn(*args, **kwargs)`` (already lifted over
    the workers, as for :func:`collective_bytes`), read from the compiled HLO; group sizes
    from its replica groups and the module's device count."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return hlo_collective_ops(jitted.lower(*args, **kwargs).compile().as_text())


def worker_ops(
    fn: Callable,
    num_workers: int,
    *args,
    in_axes: InAxes = 0,
    axis_name: str = WORKERS,
    platform: str = "cpu",
    conditionals: str = "max",
    nodes: int = 1,
) -> list[CollectiveOp]:
    """The collective operations of one call of the per-worker ``fn`` with one worker per
    device, lowered as :func:`worker_bytes` lowers it (no device needed); ``nodes > 1``: on
    a two-level ``(nodes, local)`` mesh (:func:`jdo.lifting.shard_map_workers`)."""
    hlo = worker_hlo(
        fn, num_workers, *args, in_axes=in_axes, axis_name=axis_name, platform=platform, nodes=nodes
    )
    return hlo_collective_ops(hlo, conditionals, num_devices=num_workers)
