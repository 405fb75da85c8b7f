"""The synchronous sharded parameter server is all-reduce SGD with 1/W of its optimizer state:
the same iterates (SGD and Adam, 20 steps, vmap and shard_map) on a model whose parameter
count the workers do not divide; the modes are checked and the asynchronous ones handed to
jdo.asynchrony; a run through the runner reports the reduce-scatter and the all-gather."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdo
from jdo import checks
from jdo.train import run
from jdo.train.clocked import cluster_from_config
from jdo.transforms.sharded import shard_size
from tests.conftest import compose_cfg

W, B, STEPS = 8, 4, 20
OPTIMIZERS = {"sgd": lambda: optax.sgd(0.1), "adam": lambda: optax.adam(1e-2)}


def _problem():
    # 16·7 + 7 + 7·3 + 3 = 143 parameters: 8 shards of 18, the last 1 entry padding
    model = jdo.models.MLP((16,), 3, hidden=(7,), rngs=nnx.Rngs(0))
    apply, params = jdo.models.functional(model)
    rng = np.random.default_rng(0)
    batches = {
        "x": rng.normal(size=(STEPS, W, B, 16)).astype(np.float32),
        "y": rng.integers(0, 3, size=(STEPS, W, B)).astype(np.int32),
        "weight": np.ones((STEPS, W, B), np.float32),
    }
    return jdo.data.make_loss(apply, "classification"), params, batches


LOSS, PARAMS, BATCHES = _problem()
P = sum(x.size for x in jax.tree.leaves(PARAMS))


def _train_both(opt, lifting, mesh):
    """The parameter server's and all-reduce SGD's states after ``STEPS`` steps, from ONE
    jitted program (a ``lax.scan`` over the steps of both)."""
    algos = [
        jdo.algorithms.parameter_server(LOSS, OPTIMIZERS[opt]()),
        jdo.algorithms.allreduce_sgd(LOSS, OPTIMIZERS[opt]()),
    ]

    def train(params, keys, batches):
        def init(params, key):
            return [a.init(params, key) for a in algos]

        def step(states, batch, key):
            return [a.step(s, batch, key)[0] for a, s in zip(algos, states, strict=True)]

        states = jdo.lift(init, lifting, mesh=mesh, in_axes=(None, 0))(params, keys)
        lifted_step = jdo.lift(step, lifting, mesh=mesh, in_axes=(0, 0, None))
        body = lambda states, batch: (lifted_step(states, batch, keys[0]), None)
        return jax.lax.scan(body, states, batches)[0]

    return jax.jit(train)(PARAMS, jnp.zeros((W, 2), jnp.uint32), BATCHES)


@pytest.fixture(scope="module")
def runs(mesh8):
    """``{(optimizer, lifting): (parameter-server state, all-reduce SGD state)}``."""
    return {(o, lift): _train_both(o, lift, mesh8) for o in OPTIMIZERS for lift in jdo.LIFTINGS}


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_sync_equals_allreduce_sgd(opt, lifting, runs):
    assert P % W != 0
    ps, ar = runs[opt, lifting]
    for x, y in zip(jax.tree.leaves(ps.params), jax.tree.leaves(ar.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(x, np.broadcast_to(x[0], x.shape))  # workers identical
    assert int(ps.step[0]) == STEPS
    start = jax.tree.leaves(PARAMS)[0]
    assert not np.allclose(jax.tree.leaves(ps.params)[0][0], start)  # it did train


def _device_bytes(tree) -> int:
    """Bytes of the arrays of parameter size one device holds (leaves with a per-worker axis
    beyond ``[W]``; Adam's step counts are scalars per worker, the same in both)."""
    leaves = [x for x in jax.tree.leaves(tree) if x.ndim > 1]
    return sum(x.addressable_shards[0].data.nbytes for x in leaves)


def test_optimizer_state_per_worker_is_one_over_w_of_the_replicated(runs):
    ps, ar = runs["adam", "shard_map"]  # one worker per device: what a device holds
    replicated, sharded = _device_bytes(ar.opt_state), _device_bytes(ps.opt_state)
    assert replicated == 2 * 4 * P  # Adam's two moments, float32
    padded = W * shard_size(P, W)
    assert sharded * W == replicated * padded // P  # 1/W of the (padded) replicated state
    scalars = lambda s: [x.shape for x in jax.tree.leaves(s) if x.ndim <= 1]
    assert scalars(ps.opt_state) == scalars(ar.opt_state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "hogwild"}, "mode must be one of 'sync', 'async', 'ssp', 'k_async'; got"),
        ({"mode": "ssp"}, "staleness is required with mode='ssp', got None"),
        ({"mode": "k_async"}, "k is required with mode='k_async', got None"),
        ({"staleness": 2}, "staleness is taken by the asynchronous modes (async, ssp, k_async)"),
        ({"dc_lambda": 0.1}, "dc_lambda is taken by the asynchronous modes"),
    ],
)
def test_bad_modes_and_arguments_are_one_clear_line(kwargs, message):
    with pytest.raises(checks.InvalidArgument) as err:
        jdo.algorithms.parameter_server(LOSS, optax.sgd(0.1), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_asynchronous_modes_are_jdo_asynchrony_algorithm(monkeypatch):
    calls = []
    fake = types.ModuleType("jdo.asynchrony")
    fake.algorithm = lambda *args, **kwargs: calls.append((args, kwargs)) or "made"
    monkeypatch.setitem(sys.modules, "jdo.asynchrony", fake)
    monkeypatch.setattr(jdo, "asynchrony", fake, raising=False)
    opt = optax.sgd(0.1)
    out = jdo.algorithms.parameter_server(LOSS, opt, "ssp", 2, "a cluster", lr_scaling="tau")
    assert out == "made"
    ((args, kwargs),) = calls
    assert args == (LOSS, opt)
    assert kwargs == {
        "mode": "ssp",
        "staleness": 2,
        "k": None,
        "cluster": "a cluster",
        "lr_scaling": "tau",
        "dc_lambda": None,
        "axis_name": jdo.WORKERS,
    }


def test_runner_reports_the_reduce_scatter_and_all_gather_and_clocks_them(tmp_path):
    cfg = compose_cfg(
        "algorithm=parameter_server",
        "optimizer=adam",
        "cluster=datacenter",
        "task=least_squares",
        "trainer.steps=4",
        "trainer.log_every=2",
        "trainer.eval_every=4",
        "trainer.progress=false",
        "checkpoint=none",
    )
    summary = run(cfg, output_dir=str(tmp_path))
    assert np.isfinite(summary["train/loss"])
    # a linear model on 16 features: 17 parameters, padded to 8 shards of 3
    padded = 4 * W * shard_size(17, W)
    ring = (W - 1) / W * padded  # one worker's wire bytes in each ring collective
    assert summary["bytes/step_by_kind"] == {
        "all-reduce": 0,
        "all-gather": round(ring),
        "reduce-scatter": round(ring),
        "collective-permute": 0,
        "all-to-all": 0,
    }
    assert summary["bytes/step"] == 2 * round(ring)
    cluster = cluster_from_config(cfg.cluster, W)
    comm = cluster.collective_time("reduce-scatter", padded, W) + cluster.collective_time(
        "all-gather", padded, W
    )
    assert summary["time/comm"] == pytest.approx(comm, rel=1e-5)
