"""The hybrid lifting (k = W/D workers on each of D devices): equal to vmap for the algorithms,
collectives lowered to what crosses devices (checked in the compiled HLO), clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jdo
from jdo import comm
from jdo import topology as T
from jdo._logical import plan, ppermute
from tests.conftest import compose_cfg

B, STEPS, IN, OUT = 4, 10, 8, 3


@functools.cache
def problem(workers):
    """Softmax regression (one matrix-shaped leaf, for PowerSGD) and each worker's batch."""
    rng = np.random.default_rng(workers)
    params = {"w": jnp.asarray(0.1 * rng.normal(size=(IN, OUT)), jnp.float32)}
    apply = lambda p, x: x @ p["w"]
    batch = {
        "x": rng.normal(size=(workers, B, IN)).astype(np.float32),
        "y": rng.integers(0, OUT, size=(workers, B)).astype(np.int32),
        "weight": np.ones((workers, B), np.float32),
    }
    return jdo.data.make_loss(apply, "classification"), params, batch


ALGORITHMS = {
    "allreduce_sgd": lambda w: {},
    "dpsgd_ring": lambda w: {"topology": T.ring(w)},
    "dpsgd_exponential": lambda w: {"topology": T.exponential(w)},
    "dpsgd_one_peer": lambda w: {"topology": T.one_peer_exponential(w)},
    "choco_sgd": lambda w: {
        "topology": T.ring(w),
        "compressor": jdo.compress.top_k(0.5),
        "gamma": 0.5,
    },
    "powersgd": lambda w: {"rank": 2, "min_compression": 1.0},
}


def run_steps(algo, workers, lifting, mesh, steps=STEPS):
    """``steps`` steps of ``algo`` on :func:`problem`'s batches in one jitted scan; the
    stacked params after them."""
    _, params, batch = problem(workers)
    lift = functools.partial(jdo.lift, lifting=lifting, mesh=mesh)
    init = lift(algo.init, in_axes=(None, 0))
    step = lift(algo.step, in_axes=(0, 0, None))

    @jax.jit
    def run(params, keys, batch):
        body = lambda s, t: (step(s, batch, jax.random.key(t))[0], None)
        state, _ = jax.lax.scan(body, init(params, keys), jnp.arange(steps))
        return algo.params(state)

    return run(params, jax.random.split(jax.random.key(1), workers), batch)


def train_steps(name, workers, lifting, mesh):
    """``STEPS`` steps of ``name`` (:data:`ALGORITHMS`) lifted by ``lifting``."""
    loss_fn = problem(workers)[0]
    algo_name = "dpsgd" if name.startswith("dpsgd") else name
    algo = jdo.algorithms.get(algo_name)(loss_fn, optax.sgd(0.1), **ALGORITHMS[name](workers))
    return run_steps(algo, workers, lifting, mesh)


def assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        err = np.abs(x - y) / np.maximum(1.0, np.abs(x))
        assert err.max() <= 1e-6, f"max relative error {err.max():.3g}"


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "dpsgd_exponential"])
def test_hybrid_equals_vmap_16_workers(name, mesh8):  # exponential: at 64 workers below
    assert_equal(train_steps(name, 16, "vmap", None), train_steps(name, 16, "hybrid", mesh8))


@pytest.mark.parametrize("name", ["dpsgd_exponential", "choco_sgd"])
def test_hybrid_equals_vmap_64_workers(name, mesh8):
    assert_equal(train_steps(name, 64, "vmap", None), train_steps(name, 64, "hybrid", mesh8))


# ---- collectives against numpy ------------------------------------------------------------


def _hybrid(fn, mesh, **kw):
    return jax.jit(jdo.lift(fn, "hybrid", mesh=mesh, **kw))


def test_collectives_equal_dense_references(mesh8):
    w = 16
    xs = np.random.default_rng(0).normal(size=(w, 3)).astype(np.float32)
    cases = {
        comm.mean: comm.mean_reference(xs),
        comm.sum: comm.sum_reference(xs),
        comm.all_gather: comm.all_gather_reference(xs),
        (lambda x: comm.reduce_scatter(jnp.tile(x, (w, 1)))): comm.reduce_scatter_reference(
            np.repeat(xs[:, None], w, axis=1)
        ),
        (lambda x: x * comm.worker_index() + comm.num_workers()): xs * np.arange(w)[:, None] + w,
    }
    for fn, want in cases.items():
        np.testing.assert_allclose(_hybrid(fn, mesh8)(xs), want, rtol=1e-6, atol=1e-6)


def test_irregular_permutation_equals_numpy(mesh8):
    """A permutation where devices send different numbers of rows at the same offset (padded)
    and some workers receive nothing (zeros, as ``jax.lax.ppermute`` gives), on a pytree of
    two dtypes (each dtype's leaves travel packed in one buffer)."""
    w = 16
    rng = np.random.default_rng(3)
    dst = rng.permutation(w)
    perm = [(int(s), int(d)) for s, d in zip(range(w), dst, strict=True) if s % 5]
    xs = {
        "a": rng.normal(size=(w, 2)).astype(np.float32),
        "b": rng.normal(size=(w, 3, 2)).astype(np.float32),
        "c": rng.integers(-9, 9, size=(w,)).astype(np.int32),
    }
    out = _hybrid(lambda x: ppermute(x, jdo.WORKERS, perm), mesh8)(xs)
    for name, x in xs.items():
        want = np.zeros_like(x)
        for s, d in perm:
            want[d] = x[s]
        np.testing.assert_array_equal(out[name], want)


def test_ring_plan_sends_one_row_each_way():
    """Ring, k = 2 workers per device on 8 devices: per shift, one offset, one row."""
    for shift, delta, row in ((1, 1, 1), (15, 7, 0)):  # to the next worker / the previous
        p = plan(tuple((i, (i + shift) % 16) for i in range(16)), 8, 2)
        (off,) = p.offsets
        assert (off.delta, off.send.shape, int(off.send[0, 0])) == (delta, (8, 1), row)
        assert (p.local >= 0).sum() == 8  # the other row of every device moves locally


def test_raw_lax_collective_fails_with_one_line(mesh8):
    f = _hybrid(lambda x: jax.lax.psum(x, jdo.WORKERS), mesh8)
    with pytest.raises(NameError, match="jdo.comm") as err:
        f(np.zeros((16, 2), np.float32))
    assert "\n" not in str(err.value)


def test_devices_must_divide_workers(mesh8):
    with pytest.raises(ValueError, match="D=8 devices must divide W=12"):
        _hybrid(comm.mean, mesh8)(np.zeros((12, 2), np.float32))
    with pytest.raises(ValueError, match="needs a mesh"):
        jdo.lift(comm.mean, "hybrid")


# ---- the compiled program ------------------------------------------------------------------


def _step_hlo(name, workers, lifting, mesh):
    """The compiled HLO of one step of ``name`` lifted over the 8 devices."""
    loss_fn, params, batch = problem(workers)
    algo_name = "dpsgd" if name.startswith("dpsgd") else name
    algo = jdo.algorithms.get(algo_name)(loss_fn, optax.sgd(0.1), **ALGORITHMS[name](workers))
    keys = jax.random.split(jax.random.key(0), workers)
    state = jax.vmap(algo.init, in_axes=(None, 0), axis_name=jdo.WORKERS)(params, keys)
    lifted = jdo.lift(
        algo.step, lifting, mesh=mesh if lifting == "hybrid" else None, in_axes=(0, 0, None)
    )
    sharded = NamedSharding(mesh, P(jdo.WORKERS))
    step = jax.jit(lifted, in_shardings=(sharded, sharded, None))
    return step.lower(state, batch, jax.random.key(0)).compile().as_text()


def test_no_full_gather_and_a_ring_moves_two_rows_per_device(mesh8):
    """D-PSGD on a ring and all-reduce SGD: no all-gather/all-reduce/all-to-all holds the
    stacked [W, ...] params; the all-reduce carries one worker's gradient (plus the loss
    metrics); the ring's permutes move 2 rows per device."""
    w, row = 16, IN * OUT * 4  # one worker's params: one f32 [IN, OUT] leaf
    stacked = lambda op: op.kind != "collective-permute" and op.nbytes >= w * row
    ops = comm.hlo_collective_ops(_step_hlo("dpsgd_ring", w, "hybrid", mesh8))
    assert not [op for op in ops if stacked(op)]
    reduced = comm.hlo_collective_ops(_step_hlo("allreduce_sgd", w, "hybrid", mesh8))
    assert not [op for op in reduced if stacked(op)]
    assert row <= sum(op.nbytes for op in reduced if op.kind == "all-reduce") < 2 * row
    permutes = [op for op in ops if op.kind == "collective-permute"]
    assert sum(op.nbytes * op.count for op in permutes) == 2 * row  # one row each way
    # the check can fail: vmap over the same 8 devices gathers the whole stacked state
    vmapped = comm.hlo_collective_ops(_step_hlo("dpsgd_ring", w, "vmap", mesh8))
    assert [op for op in vmapped if stacked(op)]


# ---- the runner ----------------------------------------------------------------------------

RUN = (
    "task=least_squares",
    "algorithm=dpsgd",
    "topology=ring",
    "cluster=datacenter",
    "workers=16",
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.eval_every=20",
    "trainer.progress=false",
    "checkpoint=none",
)


def test_runner_hybrid_equals_vmap_and_reports_device_bytes(tmp_path):
    """``lifting=hybrid lifting.devices=4`` through the runner, clocked on a simulated
    cluster: the vmap run's params, simulated time and logical ``bytes/step``;
    ``bytes/step_device`` two rows of the params (a ring)."""
    hybrid = jdo.train.run(
        compose_cfg(*RUN, "lifting=hybrid", "lifting.devices=4"), output_dir=str(tmp_path / "h")
    )
    vmapped = jdo.train.run(compose_cfg(*RUN, "lifting=vmap"), output_dir=str(tmp_path / "v"))
    params = [jax.device_get(s["state"].inner.params) for s in (vmapped, hybrid)]
    assert_equal(*params)
    assert hybrid["time/total"] == pytest.approx(vmapped["time/total"], rel=1e-6)
    row = sum(4 * x[0].size for x in jax.tree.leaves(params[0]))
    assert hybrid["bytes/step"] == vmapped["bytes/step"] == 2 * row  # per worker: 2 messages
    assert (hybrid["bytes/step_device"], vmapped["bytes/step_device"]) == (2 * row, 0)


def test_a_time_varying_graph_runs_one_schedule_per_step(mesh8):
    """One-peer exponential over 16 workers, 2 per device: step t sends to the worker 2^t
    further on (1 row crosses devices for t = 0, both rows after). The compiled step sends
    the worst branch's 2 rows, not every branch's (a per-worker ``switch`` index under vmap
    would run all four)."""
    w, d = 16, 5
    topo = T.one_peer_exponential(w)
    xs = np.random.default_rng(0).normal(size=(w, d)).astype(np.float32)
    f = _hybrid(lambda x, t: comm.mix(x, topo, t), mesh8)
    for t in range(topo.period + 1):
        out = f(xs, np.full(w, t, np.int32))
        np.testing.assert_allclose(out, comm.mix_reference(xs, topo, t), rtol=1e-6, atol=1e-6)
    hlo = f.lower(xs, np.zeros(w, np.int32)).compile().as_text()
    assert comm.hlo_collective_bytes(hlo)["collective-permute"] == 2 * d * 4


def test_a_group_of_one_device_averages_without_communication(mesh8):
    """``group_mean`` over groups of k = 2 (hierarchical local SGD's groups) is local to each
    device under the hybrid lifting: the compiled step has no collective at all."""
    w = 16
    xs = np.random.default_rng(1).normal(size=(w, 3)).astype(np.float32)
    f = _hybrid(lambda x: comm.group_mean(x, 2), mesh8)
    want = np.repeat(xs.reshape(8, 2, 3).mean(axis=1), 2, axis=0)
    np.testing.assert_allclose(f(xs), want, rtol=1e-6, atol=1e-6)
    assert sum(comm.hlo_collective_bytes(f.lower(xs).compile().as_text()).values()) == 0


def test_a_bad_hybrid_config_names_its_key():
    with pytest.raises(jdo.train.ConfigError, match="must divide workers") as err:
        jdo.train.validate(compose_cfg("lifting=hybrid", "lifting.devices=3", "workers=16"))
    assert err.value.key == "lifting.devices"
