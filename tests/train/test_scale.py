"""Simulating many workers: per-worker initialisation, the chunked / sequential map of the
per-worker compute under the vmap lifting, and FedAvg computing only its sampled cohort."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdo
from jdo.train import run

TINY = (
    "task=logistic",
    "model=mlp",
    "model.hidden=[8]",
    "workers=4",
    "seed=3",
    "trainer.steps=1",
    "trainer.log_every=1",
    "trainer.eval_every=1",
    "trainer.progress=false",
    "checkpoint=none",
)


def _eager_init(key):
    """The task's model built on the host from ``key`` (the reference)."""
    model = jdo.models.MLP(in_shape=(16,), num_outputs=1, hidden=[8], rngs=nnx.Rngs(key))
    return jdo.models.functional(model)[1]


@pytest.mark.parametrize("init", ["shared", "per_worker"])
def test_trainer_init_starts_workers_from_their_own_or_the_shared_params(init, make_cfg):
    """One local step of negligible size (no averaging yet): each worker still holds its
    initial params, built from fold_in(key(seed), worker) under per_worker, from the shared
    key(seed) model otherwise."""
    cfg = make_cfg(
        *TINY,
        "algorithm=local_sgd",
        "optimizer=sgd",
        "optimizer.learning_rate=1e-9",
        f"trainer.init={init}",
    )
    params = jax.device_get(run(cfg)["state"].params)
    for i in range(4):
        key = jax.random.fold_in(jax.random.key(3), i) if init == "per_worker" else 3
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_eager_init(key)), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6)
    kernel = params["layers"][0]["kernel"]
    assert np.allclose(kernel[0], kernel[1]) == (init == "shared")


# ----------------------------------------------------------------------------------------------
# lifting.chunk / lifting.map: the per-worker compute chunked or sequential, collectives whole
# ----------------------------------------------------------------------------------------------


def _mlp_loss(params, batch, key):
    del key
    x, y = batch
    h = jnp.tanh(jnp.tanh(x @ params["w1"]) @ params["w2"])
    return jnp.mean((h @ params["w3"])[:, 0] - y) ** 2, {}


def _mlp_params(d, h, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (d, h), "w2": (h, h), "w3": (h, 1)}
    return {
        k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32) for k, s in shapes.items()
    }


@pytest.mark.parametrize("name", ["allreduce_sgd", "dpsgd"])
def test_chunked_and_sequential_maps_equal_vmap(name):
    """10 steps on 10 workers: chunks of 3 (a remainder chunk of 1) and one by one give the
    plain vmap's params (1e-6 relative to max(1, |x|)): the all-reduce / gossip sees every
    worker although the gradients are computed a chunk at a time."""
    w = 10
    if name == "dpsgd":
        algo = jdo.algorithms.dpsgd(_mlp_loss, optax.sgd(0.1), jdo.topology.ring(w))
    else:
        algo = jdo.algorithms.allreduce_sgd(_mlp_loss, optax.adam(1e-2))
    rng = np.random.default_rng(1)
    batch = (
        jnp.asarray(rng.normal(size=(w, 16, 5)), jnp.float32),
        jnp.asarray(rng.normal(size=(w, 16)), jnp.float32),
    )
    keys = jax.random.split(jax.random.key(0), w)
    init = jdo.lift(algo.init, "vmap", in_axes=(None, 0))
    finals = []
    for options in ({}, {"chunk": 3}, {"map": "scan"}):
        step = jax.jit(jdo.lift(algo.step, "vmap", **options))
        state = init(_mlp_params(5, 16), keys)
        for _ in range(10):
            state, _ = step(state, batch, keys)
        finals.append(jax.tree.leaves(jax.device_get(state.params)))
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            assert np.max(np.abs(a - b) / np.maximum(1, np.abs(a))) < 1e-6
    assert np.max(np.abs(finals[0][0] - _mlp_params(5, 16)["w1"])) > 1e-3  # it trained


def test_chunked_memory_is_bounded_by_the_chunk_not_the_workers():
    """Compiled temporary memory of one all-reduce SGD step beyond the [W, d] gradient: with
    chunk=4 it is bounded by 4 workers' activations at W=16 and W=64; the plain vmap's grows
    with W."""
    batch_rows, d, h, c = 256, 32, 256, 4
    params = _mlp_params(d, h)
    algo = jdo.algorithms.allreduce_sgd(_mlp_loss, optax.sgd(0.1))
    activations = 4 * batch_rows * h * 4  # per worker: two hidden layers, forward and backward
    grad_bytes = 4 * sum(x.size for x in jax.tree.leaves(params))
    excess = {}
    for w in (16, 64):
        keys = jax.random.split(jax.random.key(0), w)
        state = jax.eval_shape(jdo.lift(algo.init, "vmap", in_axes=(None, 0)), params, keys)
        batch = (
            jax.ShapeDtypeStruct((w, batch_rows, d), jnp.float32),
            jax.ShapeDtypeStruct((w, batch_rows), jnp.float32),
        )
        for chunk in (None, c):
            lowered = jax.jit(jdo.lift(algo.step, "vmap", chunk=chunk)).lower(state, batch, keys)
            temp = lowered.compile().memory_analysis().temp_size_in_bytes
            excess[w, chunk] = temp - w * grad_bytes
    bound = 2 * c * activations  # what c workers' forward and backward need, with slack
    assert excess[16, c] <= bound and excess[64, c] <= bound, excess
    assert excess[64, None] > 4 * bound, excess


def test_auto_maps_convolutions_one_by_one_on_cpu():
    from jdo.worker_map import WorkerMap, batch_size_for

    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32)
    conv = lambda k, x: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ).sum()
    dense = lambda k, x: (x.reshape(1, -1)[:, :9] @ k.reshape(9, 4)).sum()
    auto = WorkerMap("auto", chunk=4)
    assert batch_size_for(auto, jax.grad(conv), (kernel, x), 16) is None  # sequential
    assert batch_size_for(auto, jax.grad(dense), (kernel, x), 16) == 4
    assert batch_size_for(WorkerMap("auto"), jax.grad(dense), (kernel, x), 16) == 16  # vmap
    assert batch_size_for(WorkerMap("vmap", 4), jax.grad(conv), (kernel, x), 16) == 4


# ----------------------------------------------------------------------------------------------
# FedAvg with sampled participation: only the sampled cohort computes
# ----------------------------------------------------------------------------------------------


def test_sampled_fedavg_computes_only_the_cohort_and_equals_the_masked_rounds(make_cfg):
    """20 clients, 10% sampled: the compiled chunk's FLOPs are under 0.2x the masked one's
    (every client computing), and after two rounds the global model is the same (1e-6)."""
    from jdo.train.builder import build
    from jdo.train.guard import guard_nonfinite
    from jdo.train.program import make_program, place

    w = 20
    exp = build(
        make_cfg(
            *TINY[:3],
            f"workers={w}",
            "algorithm=fedavg",
            "algorithm.participation=0.1",
            "algorithm.local_steps=4",
            "optimizer=sgd",
            "optimizer.learning_rate=0.1",
        )
    )
    sampled = guard_nonfinite(exp.algorithm, "stop")
    key, zero, flops, params = jax.random.key(5), jnp.int32(0), {}, {}
    for name, algo in {"sampled": sampled, "masked": sampled._replace(cohort=None)}.items():
        program = make_program(
            exp,
            algo,
            workers=w,
            lifting="vmap",
            devices=1,
            batch_size=32,
            length=8,
            check_state=True,
        )
        data = place(tuple(exp.data), program.per_worker)
        state = program.init(exp.params, jax.random.split(jax.random.key(1), w))
        compiled = program.chunk.lower(state, data, key, zero, zero).compile()
        flops[name] = compiled.cost_analysis()["flops"]
        state, metrics, finite = compiled(state, data, key, zero, jnp.int32(8))
        assert np.all(finite) and np.all(np.isfinite(metrics["loss"]))
        params[name] = jax.tree.leaves(jax.device_get(program.params_of(state)))
    assert flops["sampled"] < 0.2 * flops["masked"], flops
    for a, b in zip(params["sampled"], params["masked"], strict=True):
        assert np.max(np.abs(a - b) / np.maximum(1, np.abs(a))) < 1e-6
        assert np.allclose(a, a[0])  # every client holds the new global model
    assert not np.allclose(params["sampled"][0][0], exp.params["head"]["bias"])  # it trained


def test_sampled_fedavg_from_the_command_line_counts_a_participants_bytes(make_cfg):
    """Half of 4 clients sampled: each participant's ring all-reduce among the 2 of its round
    sends 2(2-1)/2 = 1x the float32 params per step; the run trains."""
    cfg = make_cfg(
        *TINY[:4],
        "trainer.steps=4",
        "trainer.log_every=2",
        "trainer.eval_every=4",
        *TINY[-2:],
        "algorithm=fedavg",
        "algorithm.participation=0.5",
        "algorithm.local_steps=2",
        "optimizer=sgd",
    )
    summary = run(cfg)
    num_params = sum(x[0].size for x in jax.tree.leaves(jax.device_get(summary["state"].params)))
    assert summary["bytes/step"] == 4 * num_params
    assert np.isfinite(summary["train/loss"])


def test_a_marked_compute_with_a_collective_is_refused_when_chunked():
    marked = jdo.worker_map.per_worker_compute(lambda x: jax.lax.psum(x, "workers"))
    xs = jnp.arange(6.0)
    np.testing.assert_array_equal(jdo.lift(marked, "vmap")(xs), np.full(6, 15.0))
    with pytest.raises(ValueError, match="calls collectives"):
        jdo.lift(marked, "vmap", chunk=2)(xs)


def test_the_runner_compiles_its_chunk_without_xla_ynn_fusions(monkeypatch, make_cfg):
    """jdo.train.program.compile_chunk: XLA's CPU YNNPACK fusions, 55x slower for FedAvg at
    256 MLP workers (README, benchmarks), are left out of the runner's chunk; with
    JDO_CPU_YNN_FUSION=1 XLA's default (which fuses this step so) is kept."""
    from experiments.bench.worker_map import Chunk

    cfg = lambda: make_cfg(  # noqa: E731
        "task=logistic",
        "task.data.dim=16",
        "task.data.num_samples=64",
        "model=mlp",
        "model.hidden=[32]",
        "workers=8",
        "algorithm=fedavg",
        "algorithm.local_steps=2",
    )
    monkeypatch.setenv("JDO_CPU_YNN_FUSION", "1")
    assert "%ynn_fusion" in Chunk(cfg(), 2).fn.as_text()
    monkeypatch.delenv("JDO_CPU_YNN_FUSION")
    assert "%ynn_fusion" not in Chunk(cfg(), 2).fn.as_text()
