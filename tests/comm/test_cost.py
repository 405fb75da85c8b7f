import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdo
from jdo.comm.cost import hlo_collective_bytes, shape_bytes


def _mlp_params():
    _, params = jdo.models.functional(jdo.models.MLP((64,), 10, hidden=(32, 16), rngs=nnx.Rngs(0)))
    return params


def _stack(tree, n=8):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


def test_shape_bytes():
    assert shape_bytes("f32[4,8]{1,0}") == 128
    assert shape_bytes("(bf16[3], s8[10], f32[])") == 20
    assert shape_bytes("token[]") == 0


def test_allreduce_of_mlp_gradients_is_4_bytes_per_parameter(mesh8):
    params = _mlp_params()
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tx = jdo.transforms.all_reduce()

    def step(grads):
        updates, _ = tx.update(grads, tx.init(grads))
        return updates

    lifted = jax.jit(jdo.lift(step, "shard_map", mesh=mesh8))
    counted = jdo.comm.collective_bytes(lifted, _stack(params))
    assert counted == {
        "all-reduce": 4 * num_params,
        "all-gather": 0,
        "reduce-scatter": 0,
        "collective-permute": 0,
        "all-to-all": 0,
    }
    # The abstract-mesh count (what the runner logs, also for vmap runs) agrees.
    assert jdo.comm.worker_bytes(step, 8, params) == counted


def test_no_communication_is_zero_bytes(mesh8):
    params = _mlp_params()
    lifted = jax.jit(jdo.lift(lambda p: jax.tree.map(lambda x: 2 * x, p), "shard_map", mesh=mesh8))
    assert sum(jdo.comm.collective_bytes(lifted, _stack(params)).values()) == 0


def test_each_kind_and_scan_trip_count(mesh8):
    ring = [(i, (i + 1) % 8) for i in range(8)]

    def f(x):  # x: f32[16] per worker
        gathered = jax.lax.all_gather(x, jdo.WORKERS)  # sends 64 B
        scattered = jax.lax.psum_scatter(x, jdo.WORKERS, tiled=True)  # sends 64 B
        swapped = jax.lax.all_to_all(x.reshape(8, 2), jdo.WORKERS, 0, 0)  # sends 64 B

        def body(c, _):
            return jax.lax.ppermute(c, jdo.WORKERS, ring), None  # 64 B x 5 steps

        permuted, _ = jax.lax.scan(body, x, None, length=5)
        return gathered.sum() + scattered.sum() + swapped.sum() + permuted.sum()

    lifted = jax.jit(jdo.lift(f, "shard_map", mesh=mesh8))
    counted = jdo.comm.collective_bytes(lifted, np.ones((8, 16), np.float32))
    assert counted == {
        "all-reduce": 0,
        "all-gather": 64,
        "reduce-scatter": 64,
        "collective-permute": 320,
        "all-to-all": 64,
    }


def test_conditional_counts_its_most_expensive_branch():
    text = """
HloModule m

%small (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %ar = f32[4]{0} all-reduce(%p), to_apply=%add
}

%big (q: f32[8]) -> f32[4] {
  %q = f32[8]{0} parameter(0)
  %g = f32[64]{0} all-gather(%q), dimensions={0}
  ROOT %s = f32[4]{0} slice(%g), slice={[0:4]}
}

ENTRY %main (i: s32[], x: f32[4]) -> f32[4] {
  %i = s32[] parameter(0)
  %x = f32[4]{0} parameter(1)
  %start = f32[4]{0} all-reduce-start(%x), to_apply=%add
  %done = f32[4]{0} all-reduce-done(%start)
  ROOT %c = f32[4]{0} conditional(%i, %done, %done), branch_computations={%small, %big}
}
"""
    counted = hlo_collective_bytes(text)
    assert counted["all-reduce"] == 16  # the -start op only; the small branch does not count
    assert counted["all-gather"] == 32


@pytest.mark.parametrize(
    "attrs,sent",
    [
        ("replica_groups={{0}}", 0),
        ("replica_groups={{0},{1},{2}}", 0),
        ("replica_groups=[4,1]<=[4]", 0),
        ("replica_groups={{0,1}}", 16),
        ("replica_groups=[2,2]<=[4]", 16),
        ("replica_groups={}", 16),
        ("", 16),
    ],
)
def test_collectives_where_every_worker_talks_to_itself_send_nothing(attrs, sent):
    for op, extra in (("all-reduce", ", to_apply=%add"), ("all-gather", ", dimensions={0}")):
        text = f"""
HloModule m

ENTRY %main (x: f32[4]) -> f32[4] {{
  %x = f32[4]{{0}} parameter(0)
  ROOT %c = f32[4]{{0}} {op}(%x), channel_id=1{", " + attrs if attrs else ""}{extra}
}}
"""
        assert hlo_collective_bytes(text)[op] == sent, (op, attrs)
    permute = "ROOT %c = f32[4]{{0}} collective-permute(%x), source_target_pairs={{{pairs}}}"
    for pairs, expected in (
        ("{0,0}", 0),
        ("{0,0},{1,1}", 0),
        ("{0,1},{1,0}", 16),
        ("{0,0},{1,2},{2,1}", 16),
    ):
        text = (
            "ENTRY %main (x: f32[4]) -> f32[4] {\n  %x = f32[4]{0} parameter(0)\n  "
            + permute.format(pairs=pairs).replace("{{0}}", "{0}")
            + "\n}\n"
        )
        assert hlo_collective_bytes(text)["collective-permute"] == expected, pairs


@pytest.mark.parametrize("name", ["dpsgd", "gradient_tracking", "push_sum", "allreduce_sgd"])
def test_one_worker_sends_nothing(name):
    # algorithm=dpsgd workers=1 used to report an all-reduce of the whole model per step
    loss_fn = lambda p, b, k: (jnp.sum((p["w"] - b) ** 2), {})
    params = {"w": jnp.zeros(1210)}
    extra = {} if name == "allreduce_sgd" else {"topology": jdo.topology.ring(1)}
    algo = jdo.algorithms.get(name)(loss_fn, optax.sgd(0.1), **extra)
    state = algo.init(params, None)
    count = lambda workers: jdo.comm.worker_bytes(
        algo.step, workers, state, params["w"], jax.random.key(0), in_axes=(0, 0, None)
    )
    assert sum(count(1).values()) == 0
    if name == "allreduce_sgd":  # the control: the same step on 2 workers does send
        assert count(2)["all-reduce"] == 4840


@pytest.mark.parametrize("workers", [2, 16])
def test_worker_bytes_needs_no_devices(workers):
    counted = jdo.comm.worker_bytes(lambda g: jax.lax.pmean(g, jdo.WORKERS), workers, jnp.ones(10))
    assert counted["all-reduce"] == 40


def test_optax_chain_adam_bytes_unchanged(mesh8):
    params = _mlp_params()
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tx = optax.chain(jdo.transforms.all_reduce(), optax.adam(1e-3))
    counted = jdo.comm.worker_bytes(lambda g, s: tx.update(g, s, g)[0], 8, params, tx.init(params))
    assert counted["all-reduce"] == 4 * num_params


def test_worker_bytes_multiplies_loops_like_the_compiled_count(mesh8):
    ring = [(i, (i + 1) % 8) for i in range(8)]

    def f(x):  # x: f32[16] per worker; 3 all-reduces in a fori_loop, 5 ppermutes in a scan
        y = jax.lax.fori_loop(0, 3, lambda i, c: jdo.comm.varying(jax.lax.pmean(c, "workers")), x)
        body = lambda c, _: (jax.lax.ppermute(c, "workers", ring), None)
        return jax.lax.scan(body, y, None, length=5)[0]

    compiled = jdo.comm.collective_bytes(
        jax.jit(jdo.lift(f, "shard_map", mesh=mesh8)), jnp.ones((8, 16))
    )
    assert compiled["all-reduce"] == 3 * 64 and compiled["collective-permute"] == 5 * 64
    assert jdo.comm.worker_bytes(f, 8, jnp.ones(16)) == compiled


def test_periodic_communication_min_and_max(mesh8):
    def f(x, t):  # all-reduce on every 4th step only
        return jax.lax.cond(
            t % 4 == 0, lambda v: jdo.comm.varying(jax.lax.pmean(v, "workers")), lambda v: v, x
        )

    args = (jnp.ones(16), jnp.int32(0))
    assert jdo.comm.worker_bytes(f, 8, *args, in_axes=(0, None))["all-reduce"] == 64
    assert jdo.comm.worker_bytes(
        f, 8, *args, in_axes=(0, None), conditionals="min"
    ) == dict.fromkeys(jdo.comm.KINDS, 0)
