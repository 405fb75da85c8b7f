"""DDPG: replay buffer, Polyak averaging and critic target against numpy; whole steps across
liftings; Pendulum learning."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdo.checks import InvalidArgument, WrongType
from jdo.lifting import lift
from jdo.rl import evaluate_policy, make_ddpg_networks, make_vec_env
from jdo.rl.ddpg import (
    critic_target,
    ddpg,
    polyak,
    replay_add,
    replay_init,
    replay_sample,
)
from tests.helpers import orbax_round_trip

# ---------------------------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------------------------


class NumpyRing:
    def __init__(self, capacity, obs_dim, act_dim):
        self.c = capacity
        self.cols = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, act_dim), np.float32),
            "reward": np.zeros(capacity, np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "terminated": np.zeros(capacity, bool),
        }
        self.size = self.insert = 0

    def add(self, **batch):
        for i in range(len(batch["reward"])):
            for k, v in batch.items():
                self.cols[k][self.insert] = v[i]
            self.insert = (self.insert + 1) % self.c
            self.size = min(self.size + 1, self.c)


def _batch(rng, b, obs_dim=3, act_dim=2):
    return {
        "obs": rng.normal(size=(b, obs_dim)).astype(np.float32),
        "action": rng.normal(size=(b, act_dim)).astype(np.float32),
        "reward": rng.normal(size=b).astype(np.float32),
        "next_obs": rng.normal(size=(b, obs_dim)).astype(np.float32),
        "terminated": rng.random(b) < 0.3,
    }


def test_replay_add_wraps_around_like_a_ring():
    rng = np.random.default_rng(0)
    buf, ref = replay_init(7, (3,), 2), NumpyRing(7, 3, 2)
    add = jax.jit(replay_add)
    for b in (3, 3, 1, 5, 7, 2):  # crosses the end several times; one batch fills it exactly
        batch = _batch(rng, b)
        buf = add(buf, **{k: jnp.asarray(v) for k, v in batch.items()})
        ref.add(**batch)
        for k, v in ref.cols.items():
            np.testing.assert_array_equal(np.asarray(getattr(buf, k)), v, err_msg=k)
        assert int(buf.size) == ref.size and int(buf.insert) == ref.insert
    with pytest.raises(InvalidArgument, match="more than the buffer's capacity 7"):
        replay_add(buf, **{k: jnp.asarray(v) for k, v in _batch(rng, 8).items()})
    with pytest.raises(InvalidArgument, match="capacity must be a positive integer"):
        replay_init(0, (3,), 2)


def test_replay_sample_draws_uniformly_from_filled_slots():
    rng = np.random.default_rng(1)
    buf = replay_init(10, (3,), 2)
    batch = _batch(rng, 3)
    buf = replay_add(buf, **{k: jnp.asarray(v) for k, v in batch.items()})
    key = jax.random.key(0)
    got = replay_sample(buf, key, 3000)
    idx = np.asarray(jax.random.randint(key, (3000,), 0, 3))  # the same draw, by hand
    for k, v in batch.items():
        np.testing.assert_array_equal(np.asarray(got[k]), v[idx], err_msg=k)
    counts = np.bincount(idx, minlength=3)
    assert counts.min() > 900  # uniform over the 3 filled slots (1000 expected each)


# ---------------------------------------------------------------------------------------------
# Polyak and the critic target
# ---------------------------------------------------------------------------------------------


def test_polyak_matches_numpy():
    rng = np.random.default_rng(2)
    target = {"a": rng.normal(size=(3, 4)), "b": [rng.normal(size=5)]}
    online = jax.tree.map(lambda x: rng.normal(size=x.shape), target)
    got = polyak(jax.tree.map(jnp.asarray, target), jax.tree.map(jnp.asarray, online), 0.05)
    want = jax.tree.map(lambda t, o: 0.05 * o + 0.95 * t, target, online)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7), got, want)
    same = polyak(target, online, 1.0)  # tau = 1 copies the online net
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), same, online)


def _np_mlp(p, x):
    for i in range(len(p["layers"])):
        layer = p["layers"][i]
        x = np.maximum(x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]), 0.0)
    return x @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])


def test_critic_target_matches_numpy():
    env = make_vec_env("Pendulum-v1", 2)
    apply, params = make_ddpg_networks(env, (16, 16), seed=3)
    rng = np.random.default_rng(3)
    batch = {
        "next_obs": rng.normal(size=(32, 3)).astype(np.float32),
        "reward": rng.normal(size=32).astype(np.float32),
        "terminated": rng.random(32) < 0.5,
    }
    got = critic_target(apply, params, jax.tree.map(jnp.asarray, batch), 0.9)
    # numpy: mu'(s') = low + (tanh(f(s')) + 1)(high - low)/2 on [-2, 2]; Q'(s', mu'(s')).
    mu = -2.0 + (np.tanh(_np_mlp(params["actor"], batch["next_obs"])) + 1.0) * 2.0
    q = _np_mlp(params["critic"], np.concatenate([batch["next_obs"], mu], -1))[:, 0]
    want = batch["reward"] + 0.9 * (1.0 - batch["terminated"]) * q
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # The actor respects the action bounds even far out of distribution.
    far = np.asarray(apply(params, jnp.full((4, 3), 1e3))[0])
    assert np.all(far >= -2.0) and np.all(far <= 2.0)


# ---------------------------------------------------------------------------------------------
# Whole steps
# ---------------------------------------------------------------------------------------------


@functools.cache
def _small():
    """One small configuration shared by the step tests (so they share compilations)."""
    env = make_vec_env("Pendulum-v1", 2, max_steps_in_episode=5)
    apply, params = make_ddpg_networks(env, (16, 16), seed=0)
    algo = ddpg(
        env, apply, optax.adam(1e-2), buffer_size=64, batch_size=8, learning_starts=12, num_steps=2
    )
    return algo, params


@functools.cache
def _runner(algo, workers, steps, lifting="vmap", mesh=None):
    """``(init(params), run(state, t0) -> (state, metrics))``: ``steps`` steps per call."""

    def chunk(state, key, t0):
        def body(s, t):
            k = jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index("workers")), t)
            return algo.step(s, None, k)

        return jax.lax.scan(body, state, t0 + jnp.arange(steps))

    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    run = jax.jit(lift(chunk, lifting, mesh=mesh, in_axes=(0, None, None)))
    keys = jax.random.split(jax.random.key(0), workers)
    return lambda params: init(params, keys), lambda s, t0: run(s, jax.random.key(1), t0)


def _run(algo, params, workers, chunks, lifting="vmap", mesh=None, steps=1):
    init, run = _runner(algo, workers, steps, lifting, mesh)
    state, out = init(params), []
    for c in range(chunks):
        state, metrics = run(state, jnp.int32(c * steps))
        out.append(metrics)
    return state, jax.tree.map(lambda *m: np.concatenate(m, axis=1), *out)  # [W, steps]


def test_buffer_keeps_final_observations_and_never_terminates_on_truncation():
    algo, params = _small()
    state, _ = _run(algo, params, 8, 3)  # 2 envs x 2 steps x 3: episodes of 5 end at t = 4, 9
    buf = jax.tree.map(lambda x: np.asarray(x[0]), state.buffer)
    assert int(buf.size) == 12 and not buf.terminated.any()  # Pendulum only truncates
    for n in range(2):  # slot 2t + n holds env n's step t
        for t in range(5):
            now, nxt = 2 * t + n, 2 * (t + 1) + n
            if t == 4:  # the stored successor is the final obs, not the next episode's first
                assert not np.allclose(buf.next_obs[now], buf.obs[nxt])
            else:
                np.testing.assert_array_equal(buf.next_obs[now], buf.obs[nxt])


def test_no_learning_before_learning_starts_then_identical_workers():
    algo, params = _small()  # 2 envs x 2 steps = 4 per step: learning from the 3rd step
    state, metrics = _run(algo, params, 8, 2)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.broadcast_to(a, b.shape), b)
    np.testing.assert_array_equal(metrics["loss"], 0.0)
    state, metrics = _run(algo, params, 8, 4)
    assert np.all(metrics["loss"][:, 2:] > 0)
    for leaf in jax.tree.leaves((state.params, state.target)):
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))  # all-reduce
    moved = lambda a, b: not np.allclose(np.broadcast_to(a, b.shape), b)
    assert all(
        moved(a, b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True)
    )
    # workers act on different envs and sample different shards
    assert not np.allclose(state.buffer.obs[0], state.buffer.obs[1])
    np.testing.assert_array_equal(metrics["env_steps"][0], 8 * 2 * 2 * np.arange(1, 5))


def test_liftings_agree(mesh8):
    algo, params = _small()
    a, ma = _run(algo, params, 8, 6, "vmap")
    b, mb = _run(algo, params, 8, 6, "shard_map", mesh8)
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-5, atol=1e-5
        )


def test_bad_arguments():
    env = make_vec_env("Pendulum-v1", 4)
    apply, _ = make_ddpg_networks(env, (8,))
    opt = optax.adam(1e-3)
    cases = [
        ({"tau": 0.0}, "tau"),
        ({"gamma": 1.5}, "gamma"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_starts": 10**9}, "learning_starts"),
        ({"buffer_size": 3, "learning_starts": 0}, "buffer_size"),
        ({"exploration_noise": -0.1}, "exploration_noise"),
        ({"num_steps": 0}, "num_steps"),
        ({"updates_per_step": 0}, "updates_per_step"),
    ]
    for kwargs, argument in cases:
        with pytest.raises(InvalidArgument, match=argument) as e:
            ddpg(env, apply, opt, **kwargs)
        assert e.value.argument == argument
    with pytest.raises(WrongType, match="actor_optimizer must be an optax"):
        ddpg(env, apply, opt, actor_optimizer="adam")
    with pytest.raises(InvalidArgument, match="env must have continuous actions"):
        ddpg(make_vec_env("CartPole-v1", 2), apply, opt)
    with pytest.raises(InvalidArgument, match="env must have continuous actions"):
        make_ddpg_networks(make_vec_env("CartPole-v1", 2))
    with pytest.raises(WrongType, match="env must be a vector jdo.rl.Env"):
        ddpg(object(), apply, opt)


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------


def greedy_return(apply, params, key, num_episodes=100):
    """Mean return of the noise-free policy over fresh Pendulum episodes (``greedy`` takes the
    first action-size entries of the policy output: here the action itself)."""
    evaluate = lambda p, k: evaluate_policy(
        "Pendulum-v1", apply, p, k, num_episodes=num_episodes, greedy=True
    )
    return float(jnp.mean(jax.jit(evaluate)(params, key)))


@pytest.mark.slow  # ~25-40 s on 2 cores (compile, 4500 steps, a 100-episode evaluation)
def test_ddpg_solves_pendulum():
    env = make_vec_env("Pendulum-v1", 4)
    apply, params = make_ddpg_networks(env, (64, 64), seed=0)
    algo = ddpg(
        env, apply, optax.adam(1e-3), buffer_size=50_000, batch_size=64, learning_starts=256
    )
    t0 = time.perf_counter()
    state, metrics = _run(algo, params, 4, 1, steps=4500)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    score = greedy_return(apply, jax.tree.map(lambda x: x[0], state.params), jax.random.key(7))
    print(
        f"ddpg pendulum: greedy return {score:.1f} over 100 episodes after "
        f"{metrics['env_steps'][0, -1]:.0f} env steps, {seconds:.1f} s (compile included)"
    )
    assert score >= -200


# ---------------------------------------------------------------------------------------------
# Hydra
# ---------------------------------------------------------------------------------------------


def test_pendulum_ddpg_config_runs_through_the_runner(make_cfg, tmp_path):
    from jdo.train import run

    cfg = make_cfg(
        "task=pendulum",
        "algorithm=ddpg",
        "workers=2",
        "trainer.steps=4",
        "trainer.log_every=2",
        "trainer.eval_every=4",
        "trainer.progress=false",
        "model.hidden=[16]",
        "algorithm.learning_starts=8",
        "algorithm.buffer_size=64",
    )
    summary = run(cfg, output_dir=str(tmp_path))
    # a running total read at the chunk's end: 4 steps of 2 workers x 4 envs
    assert summary["train/env_steps"] == 4 * 2 * 4
    assert np.isfinite(summary["train/loss"]) and summary["train/loss"] > 0  # learning started
    assert summary["consensus"] < 1e-10  # all-reduce: identical workers
    state = summary["state"]
    np.testing.assert_array_equal(state.buffer.size, [16, 16])  # 4 steps x 4 envs per shard


def test_ddpg_on_a_discrete_task_is_a_config_error(make_cfg):
    from jdo.train import ConfigError, build

    with pytest.raises(ConfigError, match="continuous"):
        build(make_cfg("task=cartpole", "algorithm=ddpg", "model=ddpg"))


def test_state_round_trips_through_orbax_and_continues_identically(tmp_path):

    algo, params = _small()
    init, run = _runner(algo, 8, 1, "vmap", None)  # the cache key of _run's runner
    state = init(params)
    for t in range(4):  # past learning_starts: buffer, targets and optimizer states all moved
        state, _ = run(state, jnp.int32(t))
    restored = orbax_round_trip(state, tmp_path / "ckpt")
    assert jax.tree.structure(restored) == jax.tree.structure(state)

    def go(s):
        for t in range(4, 7):
            s, _ = run(s, jnp.int32(t))
        return s

    straight, resumed = go(state), go(restored)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
