"""Mixing against the dense W @ X, under every lifting, for every topology."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo import checks, comm
from jdo import topology as T
from tests.topology.test_graphs import CASES, FACTORIES


def _mixed(topo, xs, lifting, mesh, steps):
    f = jax.jit(jdo.lift(lambda x, t: comm.mix(x, topo, t), lifting, mesh=mesh, in_axes=(0, None)))
    return [np.asarray(f(xs, t)) for t in steps]


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
@pytest.mark.parametrize("name,n", CASES)
def test_mix_equals_dense_reference(name, lifting, n):
    if lifting == "shard_map" and n > jax.device_count():
        pytest.skip("covered by test_mix_on_16_devices (a 16-device subprocess)")
    topo = FACTORIES[name](n)
    mesh = jdo.train.make_mesh(n) if lifting == "shard_map" else None
    xs = np.random.default_rng(n).normal(size=(n, 3, 2)).astype(np.float32)
    steps = list(range(topo.period + 1))  # every W(t) of a time-varying graph, and a wrap
    for t, out in zip(steps, _mixed(topo, xs, lifting, mesh, steps), strict=True):
        np.testing.assert_allclose(out, comm.mix_reference(xs, topo, t), rtol=1e-6, atol=1e-6)


def test_mix_on_16_devices():
    """n = 16 under shard_map needs 16 devices: a fresh process simulates them."""
    code = textwrap.dedent(
        """
        import os, json
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
        import jax, numpy as np, jdo
        from tests.topology.test_graphs import FACTORIES
        mesh = jdo.train.make_mesh(16)
        xs = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
        worst = {}
        for name, make in FACTORIES.items():
            topo = make(16)
            f = jax.jit(jdo.lift(lambda x, t: jdo.comm.mix(x, topo, t), "shard_map", mesh=mesh,
                                 in_axes=(0, None)))
            worst[name] = max(
                float(np.abs(f(xs, t) - jdo.comm.mix_reference(xs, topo, t)).max())
                for t in range(topo.period + 1)
            )
        print(json.dumps(worst))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    worst = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(worst) == set(FACTORIES)
    assert max(worst.values()) < 1e-6, worst


@pytest.mark.parametrize(
    "name", [k for k in FACTORIES if "directed" not in k and k != "ring_uniform"]
)
@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_mixing_preserves_the_mean(name, lifting, mesh8):
    topo = FACTORIES[name](8)
    xs = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    for out in _mixed(topo, xs, lifting, mesh8, range(topo.period)):
        np.testing.assert_allclose(out.mean(0), xs.mean(0), atol=1e-6)


def test_gossip_average_converges_to_the_mean():
    xs = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    f = jax.jit(jax.vmap(lambda x: comm.gossip_average(x, T.ring(8), 200), axis_name="workers"))
    np.testing.assert_allclose(f(xs), np.broadcast_to(xs.mean(0), xs.shape), atol=1e-5)
    # The one-peer exponential graph averages exactly in log2(8) = 3 steps.
    g = jax.jit(
        jax.vmap(
            lambda x: comm.gossip_average(x, T.one_peer_exponential(8), 3), axis_name="workers"
        )
    )
    np.testing.assert_allclose(g(xs), np.broadcast_to(xs.mean(0), xs.shape), atol=1e-6)


@pytest.mark.parametrize("lifting", jdo.LIFTINGS)
def test_push_sum_reaches_the_true_average_on_a_directed_time_varying_graph(lifting, mesh8):
    topo = T.time_varying(
        T.star(8, directed=True),
        T.ring(8, directed=True),
        T.erdos_renyi(8, 0.4, seed=3, directed=True),
    )
    assert topo.stochastic == "column" and not np.allclose(topo.mixing_matrix(0).sum(1), 1)
    xs = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    steps = 120
    push = jax.jit(jdo.lift(lambda x: comm.push_sum_average(x, topo, steps), lifting, mesh=mesh8))
    np.testing.assert_allclose(push(xs), np.broadcast_to(xs.mean(0), xs.shape), atol=1e-5)
    # Negative control: plain mixing with the same column-stochastic matrices is biased.
    plain = xs.astype(np.float64)
    for t in range(steps):
        plain = comm.mix_reference(plain, topo, t)
    assert np.abs(plain - xs.mean(0)).max() > 1e-2


def test_mix_checks_the_worker_count():
    with pytest.raises(
        checks.InvalidArgument,
        match=r"has 4 nodes but the 'workers' axis has 8 "
        "workers",
    ) as e:
        jax.vmap(lambda x: comm.mix(x, T.ring(4)), axis_name="workers")(jnp.zeros(8))
    assert e.value.argument == "topology"


@pytest.mark.parametrize(
    "topo,times",
    [
        (T.ring(8), 2),
        (T.one_peer_exponential(8), 1),
        (T.exponential(8), 3),
        (T.star(8), 7),
        (T.torus(8), 3),
    ],
    ids=repr,
)
def test_collective_permute_bytes_per_step(topo, times, mesh8):
    model = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(10)}
    model_bytes = 4 * 1010
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (8, *x.shape)), model)
    f = jax.jit(
        jdo.lift(lambda x, t: comm.mix(x, topo, t), "shard_map", mesh=mesh8, in_axes=(0, None))
    )
    counted = comm.collective_bytes(f, stacked, jnp.int32(0))
    assert counted["collective-permute"] == times * model_bytes
    assert counted["all-reduce"] == 0
    abstract = comm.worker_bytes(
        lambda x, t: comm.mix(x, topo, t), 8, model, jnp.int32(0), in_axes=(0, None)
    )
    assert abstract["collective-permute"] == times * model_bytes
