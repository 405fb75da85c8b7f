"""Asynchronous A3C with actor threads: staleness bounds, the histogram, determinism with one
actor, and learning CartPole."""

import functools

import jax
import numpy as np
import optax
import pytest

from jdo.checks import InvalidArgument, WrongType
from jdo.rl import host, make_env, make_network, make_vec_env
from jdo.rl.async_a3c import async_a3c


@functools.cache
def _setup():
    """One env, network and optimizer for every test, so they share compilations."""
    env = make_vec_env("CartPole-v1", 8)
    apply, params = make_network(env, (64, 64), seed=0)
    return env, apply, params, optax.adam(1e-3)


def _run(**kwargs):
    env, apply, params, opt = _setup()
    defaults = dict(num_actors=4, num_steps=16, max_updates=80, gae_lambda=0.95, seed=0)
    return async_a3c(env, apply, params, opt, **{**defaults, **kwargs})


def _check_histogram(out):
    staleness = np.array([m["staleness"] for m in out["history"]], np.int64)
    np.testing.assert_array_equal(np.bincount(staleness), out["staleness_histogram"])
    assert out["staleness_histogram"].sum() == out["updates"] == len(out["history"])
    return staleness


@pytest.mark.parametrize("tau", [0, 1, 2])
def test_wait_mode_never_exceeds_the_bound_and_drops_nothing(tau):
    out = _run(max_staleness=tau, on_stale="wait")
    staleness = _check_histogram(out)
    assert out["updates"] == 80 and out["dropped"] == 0
    assert staleness.max() <= tau
    assert len(out["staleness_histogram"]) <= tau + 1
    assert out["env_steps"] >= 80 * 16 * 8
    if tau > 0:  # with 4 actors there is always another gradient in flight after the start
        assert out["staleness_histogram"][tau] > 40


def test_drop_mode_discards_stale_gradients():
    out = _run(max_staleness=0, on_stale="drop")
    staleness = _check_histogram(out)
    assert staleness.max() == 0 and out["updates"] == 80
    assert out["dropped"] > 0  # 4 actors pulling the same version: all but one are stale
    assert out["history"][-1]["dropped"] == out["dropped"]
    # every computed gradient cost env steps, applied or not
    assert out["gradients"] == out["updates"] + out["dropped"]  # arrival order: none waits
    assert out["env_steps"] == out["gradients"] * 16 * 8


def test_unbounded_staleness_is_recorded():
    out = _run()
    staleness = _check_histogram(out)
    assert out["dropped"] == 0
    assert staleness.max() >= 1  # 4 concurrent actors: some gradients are stale


def test_one_actor_is_deterministic():
    a = _run(num_actors=1, max_updates=20)
    b = _run(num_actors=1, max_updates=20)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert [m["loss"] for m in a["history"]] == [m["loss"] for m in b["history"]]
    assert a["staleness_histogram"].tolist() == [20]  # one actor: always the newest params
    c = _run(num_actors=1, max_updates=20, seed=1)
    assert not np.array_equal(jax.tree.leaves(a["params"])[0], jax.tree.leaves(c["params"])[0])


def test_bad_arguments():
    env, apply, params, opt = _setup()
    cases = [
        ({"num_actors": 0}, "num_actors"),
        ({"max_staleness": -1}, "max_staleness"),
        ({"on_stale": "block"}, "on_stale"),
        ({"gamma": 2.0}, "gamma"),
        ({"gae_lambda": -1.0}, "gae_lambda"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(InvalidArgument, match=argument) as e:
            async_a3c(env, apply, params, opt, **kwargs)
        assert e.value.argument == argument
    with pytest.raises(WrongType, match="optimizer must be an optax"):
        async_a3c(env, apply, params, "adam")
    with pytest.raises(InvalidArgument, match="env must be a vector env"):
        async_a3c(make_env("CartPole-v1"), apply, params, opt)  # not vectorized
    with pytest.raises(WrongType, match="env must be a vector jdo.rl.Env"):
        async_a3c("CartPole-v1", apply, params, opt)


@pytest.mark.parametrize("tau,on_stale", [(None, "drop"), (1, "wait")])
def test_async_a3c_solves_cartpole(tau, on_stale):
    out = _run(
        max_updates=20_000, max_staleness=tau, on_stale=on_stale, target_return=475, max_seconds=120
    )
    print(
        f"async A3C tau={tau} {on_stale}: return {out['episode_return']:.1f} after "
        f"{out['env_steps']} env steps, {out['updates']} updates, {out['wall_s']:.1f} s "
        f"(+{out['compile_s']:.1f} s compile); staleness histogram "
        f"{out['staleness_histogram'].tolist()}, dropped {out['dropped']}"
    )
    assert out["reached_target"] and out["episode_return"] >= 475


def _host_envs(actor):
    return host.make_vector_env("CartPole-v1", 4)


def test_host_gymnasium_actors():
    env, apply, params, opt = _setup()  # the same network: gymnax CartPole = gymnasium's
    out = async_a3c(
        _host_envs,
        apply,
        params,
        opt,
        num_actors=2,
        num_steps=16,
        gae_lambda=0.95,
        max_updates=40,
        max_staleness=1,
        on_stale="wait",
    )
    staleness = _check_histogram(out)
    assert out["updates"] == 40 and out["dropped"] == 0 and staleness.max() <= 1
    # env steps are the valid transitions: 16 steps x 4 envs per gradient, minus the masked
    # NEXT_STEP reset transitions (one per finished episode; CartPole episodes last > 2 steps)
    assert 40 <= out["gradients"] <= 41
    assert out["gradients"] * 64 / 2 < out["env_steps"] < out["gradients"] * 64


@pytest.mark.slow  # ~30 s of gymnasium stepping on 2 cores
def test_async_a3c_solves_gymnasium_cartpole():
    env, apply, params, opt = _setup()
    out = async_a3c(
        lambda i: host.make_vector_env("CartPole-v1", 8),
        apply,
        params,
        opt,
        num_actors=4,
        num_steps=16,
        max_updates=50_000,
        target_return=475,
        max_seconds=240,
    )
    print(
        f"async A3C on gymnasium: return {out['episode_return']:.1f} after "
        f"{out['env_steps']} env steps, {out['wall_s']:.1f} s; staleness histogram "
        f"{out['staleness_histogram'].tolist()}"
    )
    assert out["reached_target"] and out["episode_return"] >= 475
