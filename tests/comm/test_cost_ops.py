"""One entry per collective operation: nccl-tests' buffer sizes, group sizes from the replica
groups, counts from loop trip counts; summed operand bytes reproduce the byte counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo.checks import InvalidArgument
from jdo.comm import CollectiveOp, hlo_collective_bytes, hlo_collective_ops


def payload_by_kind(ops):
    totals = dict.fromkeys(jdo.comm.KINDS, 0)
    for op in ops:
        totals[op.kind] += op.payload_bytes * op.count
    return totals


RING = [(i, (i + 1) % 8) for i in range(8)]


def _each_kind(x):  # x: f32[16] per worker (test_cost.py's test_each_kind_and_scan_trip_count)
    gathered = jax.lax.all_gather(x, jdo.WORKERS)
    scattered = jax.lax.psum_scatter(x, jdo.WORKERS, tiled=True)
    swapped = jax.lax.all_to_all(x.reshape(8, 2), jdo.WORKERS, 0, 0)
    body = lambda c, _: (jax.lax.ppermute(c, jdo.WORKERS, RING), None)
    permuted, _ = jax.lax.scan(body, x, None, length=5)
    return gathered.sum() + scattered.sum() + swapped.sum() + permuted.sum()


def test_each_kind_compiled(mesh8):
    lifted = jax.jit(jdo.lift(_each_kind, "shard_map", mesh=mesh8))
    x = np.ones((8, 16), np.float32)
    ops = jdo.comm.collective_ops(lifted, x)
    assert sorted(ops, key=lambda o: o.kind) == [
        CollectiveOp("all-gather", 8 * 64, 8, 1),  # the OUTPUT: 8 shards of 64 B
        CollectiveOp("all-to-all", 64, 8, 1),
        CollectiveOp("collective-permute", 64, 8, 5),  # a ring over 8 devices, 5 scan steps
        CollectiveOp("reduce-scatter", 64, 8, 1),  # the INPUT
    ]
    assert payload_by_kind(ops) == jdo.comm.collective_bytes(lifted, x)


def test_worker_ops_loops_like_worker_bytes():
    def f(x):  # 3 all-reduces in a fori_loop, 5 ppermutes in a scan
        y = jax.lax.fori_loop(0, 3, lambda i, c: jdo.comm.varying(jax.lax.pmean(c, "workers")), x)
        body = lambda c, _: (jax.lax.ppermute(c, "workers", RING), None)
        return jax.lax.scan(body, y, None, length=5)[0]

    ops = jdo.comm.worker_ops(f, 8, jnp.ones(16))
    assert [(o.kind, o.nbytes, o.group_size, o.count) for o in ops] == [
        ("all-reduce", 64, 8, 3),
        ("collective-permute", 64, 8, 5),
    ]
    assert payload_by_kind(ops) == jdo.comm.worker_bytes(f, 8, jnp.ones(16))


def test_gradient_pytree_all_reduce_matches_worker_bytes():
    params = {"w": jnp.ones((64, 32)), "b": jnp.ones(32), "v": jnp.ones((32, 10), jnp.bfloat16)}
    tx = jdo.transforms.all_reduce()
    step = lambda g: tx.update(g, tx.init(g))[0]
    ops = jdo.comm.worker_ops(step, 8, params)
    assert {o.group_size for o in ops} == {8} and {o.kind for o in ops} == {"all-reduce"}
    assert payload_by_kind(ops) == jdo.comm.worker_bytes(step, 8, params)


def test_periodic_communication_min_and_max():
    def f(x, t):
        return jax.lax.cond(
            t % 4 == 0, lambda v: jdo.comm.varying(jax.lax.pmean(v, "workers")), lambda v: v, x
        )

    args = (jnp.ones(16), jnp.int32(0))
    assert jdo.comm.worker_ops(f, 8, *args, in_axes=(0, None)) == [
        CollectiveOp("all-reduce", 64, 8, 1)
    ]
    assert jdo.comm.worker_ops(f, 8, *args, in_axes=(0, None), conditionals="min") == []


CONDITIONAL = """
HloModule m, num_partitions=4

%small (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %ar = f32[4]{0} all-reduce(%p), replica_groups={{0,1},{2,3}}, to_apply=%add
}

%big (q: f32[8]) -> f32[4] {
  %q = f32[8]{0} parameter(0)
  %g = f32[32]{0} all-gather(%q), replica_groups=[1,4]<=[4], dimensions={0}
  ROOT %s = f32[4]{0} slice(%g), slice={[0:4]}
}

ENTRY %main (i: s32[], x: f32[4]) -> f32[4] {
  %i = s32[] parameter(0)
  %x = f32[4]{0} parameter(1)
  %start = f32[4]{0} all-reduce-start(%x), replica_groups={}, to_apply=%add
  %done = f32[4]{0} all-reduce-done(%start)
  ROOT %c = f32[4]{0} conditional(%i, %done, %done), branch_computations={%small, %big}
}
"""


def test_conditional_text_and_group_forms():
    for pick, branch in (("max", CollectiveOp("all-gather", 128, 4, 1)), ("min", None)):
        ops = hlo_collective_ops(CONDITIONAL, pick)
        expected = [CollectiveOp("all-reduce", 16, 4, 1)]  # {} = all 4 devices of the header
        expected += [branch] if branch else [CollectiveOp("all-reduce", 16, 2, 1)]
        assert ops == expected, pick
        assert payload_by_kind(ops) == hlo_collective_bytes(CONDITIONAL, pick)


@pytest.mark.parametrize(
    "attrs,group",
    [
        ("replica_groups={{0}}", None),
        ("replica_groups=[4,1]<=[4]", None),
        ("replica_groups={{0,1}}", 2),
        ("replica_groups={{0,1},{2,3}}", 2),
        ("replica_groups=[2,2]<=[4]", 2),
        ("replica_groups=[1,4]<=[2,2]T(1,0)", 4),
        ("replica_groups={}", 6),
        ("", 6),
        ("source_target_pairs={{0,0},{1,1}}", None),
        ("source_target_pairs={{0,1},{1,0}}", 2),
        ("source_target_pairs={{0,0},{1,2},{2,3},{3,1}}", 3),
    ],
)
def test_group_sizes(attrs, group):
    op = "collective-permute" if "pairs" in attrs else "all-reduce"
    text = (
        "HloModule m, replica_count=2, num_partitions=3\n\n"
        "ENTRY %main (x: f32[4]) -> f32[4] {\n  %x = f32[4]{0} parameter(0)\n"
        f"  ROOT %c = f32[4]{{0}} {op}(%x){', ' + attrs if attrs else ''}\n}}\n"
    )
    ops = hlo_collective_ops(text)
    assert ops == ([] if group is None else [CollectiveOp(op, 16, group, 1)])
    assert payload_by_kind(ops) == hlo_collective_bytes(text)


def test_all_devices_without_a_device_count_is_refused():
    text = "ENTRY %main (x: f32[4]) -> f32[4] {\n  %x = f32[4]{0} parameter(0)\n"
    text += "  ROOT %c = f32[4]{0} all-reduce(%x), replica_groups={}\n}\n"
    with pytest.raises(InvalidArgument, match="num_partitions") as e:
        hlo_collective_ops(text)
    assert e.value.argument == "num_devices"
    assert hlo_collective_ops(text, num_devices=5) == [CollectiveOp("all-reduce", 16, 5, 1)]


def test_iota_groups_expand_with_their_transpose():
    text = (
        "HloModule m, num_partitions=4\n\nENTRY %main (x: f32[4]) -> f32[4] {\n"
        "  %x = f32[4]{0} parameter(0)\n"
        "  ROOT %c = f32[4]{0} all-reduce(%x), replica_groups=[2,2]<=[2,2]T(1,0)\n}\n"
    )
    (op,) = hlo_collective_ops(text)
    assert op.groups == ((0, 2), (1, 3)) and op.group_size == 2
