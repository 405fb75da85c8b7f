"""RL through the Hydra runner: configs compose and run, bad values name their key, the whole
RL state (envs, normalisers, episode statistics, param history) checkpoints and resumes."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdo
from jdo.train import ConfigError, build, run
from tests.helpers import orbax_round_trip

SMALL = (
    "trainer.steps=4",
    "trainer.log_every=2",
    "trainer.eval_every=4",
    "trainer.progress=false",
    "model.hidden=[16]",
    "algorithm.num_steps=8",
)


@pytest.mark.parametrize(
    "algorithm,extra",
    [
        pytest.param(  # ~30 s; the README's decentralized_ppo command runs it too
            "decentralized_ppo",
            ("algorithm.num_minibatches=2", "topology=ring"),
            marks=pytest.mark.slow,
        ),
        ("a2c", ("task.normalize_reward_gamma=0.99", "task.normalize_obs=true")),
        ("a3c", ("algorithm.staleness=3",)),
    ],
)
def test_rl_configs_run_through_the_runner(algorithm, extra, make_cfg, tmp_path):
    cfg = make_cfg("task=cartpole", f"algorithm={algorithm}", *SMALL, *extra)
    summary = run(cfg, output_dir=str(tmp_path))
    assert summary["train/env_steps"] > 0 and np.isfinite(summary["train/loss"])
    assert "train/episode_return" in summary
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    # a running total, read at the chunk's end: all workers' env steps after step 4
    assert lines[-1]["train/env_steps"] == 4 * 8 * 4 * 8
    if algorithm == "decentralized_ppo":
        assert summary["consensus"] > 0  # gossip: the workers differ
    else:
        assert summary["consensus"] < 1e-10  # all-reduce: identical workers
    if algorithm == "a3c":  # the histogram over steps 3, 4: worker i lags min(i mod 4, t)
        lags = np.minimum(np.arange(8)[None] % 4, np.array([[2], [3]]))
        hist = [lines[-1][f"train/staleness/{k}"] for k in range(4)]
        np.testing.assert_allclose(hist, [np.mean(lags == k) for k in range(4)], rtol=1e-6)
        np.testing.assert_allclose(lines[-1]["train/staleness"], lags.mean(), rtol=1e-6)


@pytest.mark.parametrize(
    "overrides,key,message",
    [
        (("algorithm=ppo", "task.env=Pong"), "task.env", "must be one of 'CartPole-v1'"),
        (("algorithm=ppo", "task.num_envs=0"), "task.num_envs", "must be a positive integer"),
        (
            ("algorithm=ppo", "+task.env_params.gx=1"),
            "task.env_params.gx",
            "is not a parameter of CartPole-v1",
        ),
        (("algorithm=ppo", "task.normalize_obs=maybe"), "task.normalize_obs", "true or false"),
        (("algorithm=ppo", "+task.typo=1"), "task.typo", "unknown key"),
        (("algorithm=allreduce_sgd",), "algorithm", "an RL task needs an RL algorithm"),
        (
            ("algorithm=ppo", "algorithm.num_minibatches=7"),
            "algorithm.num_minibatches",
            "must divide",
        ),
        (
            ("algorithm=ppo", "algorithm.communication=ring"),
            "algorithm.communication",
            "must be one of 'all_reduce', 'gossip'",
        ),
        (("algorithm=decentralized_ppo", "topology.n=4"), "topology.n", "must equal workers"),
        (
            ("algorithm=a3c", "algorithm.staleness=-1"),
            "algorithm.staleness",
            "must be a non-negative integer",
        ),
        (("algorithm=a3c", "algorithm.schedule=lifo"), "algorithm.schedule", "must be one of"),
        (("algorithm=a2c", "model.activation=gelu"), "model.activation", "must be one of"),
        (("algorithm=a2c", "model.hidden=[0]"), "model.hidden", "integers >= 1"),
        (("algorithm=a2c", "algorithm.gamma=2"), "algorithm.gamma", r"in \[0, 1\]"),
    ],
)
def test_bad_rl_configs_name_the_key(overrides, key, message, make_cfg):
    cfg = make_cfg("task=cartpole", *overrides)
    with pytest.raises(ConfigError, match=message) as e:
        build(cfg)
    assert e.value.key == key


@pytest.mark.parametrize("algorithm", ["a3c"])  # PPO's and A2C's state is a subset of A3C's
def test_rl_state_round_trips_through_orbax_and_continues_identically(
    algorithm, make_cfg, tmp_path
):
    cfg = make_cfg(
        "task=cartpole",
        f"algorithm={algorithm}",
        "model.hidden=[16]",
        "algorithm.num_steps=8",
        "task.normalize_obs=true",
        "task.normalize_reward_gamma=0.99",
        *(["algorithm.num_minibatches=2"] if algorithm == "ppo" else []),
    )
    exp, W = build(cfg), 8
    init = jax.jit(jax.vmap(exp.algorithm.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
    step = jax.jit(jax.vmap(exp.algorithm.step, in_axes=(0, None, 0), axis_name=jdo.WORKERS))
    keys = lambda t: jax.random.split(jax.random.key(t), W)

    def go(state, start, stop):
        for t in range(start, stop):
            state, _ = step(state, None, keys(t))
        return state

    state = go(init(exp.params, keys(100)), 0, 3)
    restored = orbax_round_trip(state, tmp_path / "ckpt")
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    straight, resumed = go(state, 3, 6), go(restored, 3, 6)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "task,algorithm",
    [
        ("cartpole", "ppo"),
        ("cartpole", "decentralized_ppo"),
        ("cartpole", "a2c"),
        ("cartpole", "a3c"),
        ("acrobot", "ppo"),
    ],
)
def test_every_rl_task_and_algorithm_builds(task, algorithm, make_cfg):
    exp = build(make_cfg(f"task={task}", f"algorithm={algorithm}"))
    state = jax.eval_shape(exp.algorithm.init, exp.params, jax.random.key(0))
    obs_size = {"cartpole": 4, "acrobot": 6}[task]
    assert state.obs.shape == (4, obs_size)  # task.num_envs copies
    assert exp.data is None and exp.dataset is None


def test_evaluate_worker_under_vmap_equals_each_worker_evaluated_alone(make_cfg):
    """build_rl's evaluate_worker, vmapped over 2 workers with their own params and their own
    observation normalisers (moments of their own reset observations): each worker's returns
    are evaluate_policy's with its params and its moments frozen (a normaliser written here)."""
    cfg = make_cfg(
        "task=cartpole",
        "algorithm=ppo",
        "workers=2",
        "model.hidden=[16]",
        "algorithm.num_steps=8",
        "algorithm.num_minibatches=2",
        "task.normalize_obs=true",
        "task.eval_episodes=6",
    )
    exp = build(cfg)
    init = jax.jit(jax.vmap(exp.algorithm.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
    state = init(exp.params, jax.random.split(jax.random.key(0), 2))
    state = state._replace(params=jax.tree.map(lambda x: x.at[1].multiply(3.0), state.params))
    moments = state.env_state.moments
    assert not np.allclose(moments.mean[0], moments.mean[1])  # the workers' normalisers differ
    keys = jax.random.split(jax.random.key(7), 2)
    out = jax.jit(jax.vmap(exp.evaluate_worker))(state, keys)
    assert set(out) == {"return", "return_greedy"} and out["return"].shape == (2,)

    @functools.partial(jax.jit, static_argnames="greedy")
    def alone(params, key, mean, var, greedy):
        norm = lambda o: jnp.clip((o - mean) / jnp.sqrt(var + 1e-8), -10, 10)
        return jdo.rl.evaluate_policy(
            "CartPole-v1", exp.apply, params, key, num_episodes=6, greedy=greedy, obs_transform=norm
        )

    for w in range(2):
        params = jax.tree.map(lambda x, w=w: x[w], state.params)
        sample_key, greedy_key = jax.random.split(keys[w])
        for name, key, greedy in (
            ("return", sample_key, False),
            ("return_greedy", greedy_key, True),
        ):
            returns = alone(params, key, moments.mean[w], moments.var[w], greedy)
            assert np.all((returns >= 1) & (returns <= 500))
            np.testing.assert_allclose(out[name][w], np.mean(returns), rtol=1e-6)


def test_ddpg_evaluate_worker_reports_the_deterministic_return(make_cfg):
    cfg = make_cfg(
        "task=pendulum",
        "algorithm=ddpg",
        "workers=2",
        "model.hidden=[8]",
        "task.eval_episodes=3",
        "+task.env_params.max_steps_in_episode=20",
    )
    exp = build(cfg)
    init = jax.jit(jax.vmap(exp.algorithm.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
    state = init(exp.params, jax.random.split(jax.random.key(0), 2))
    out = jax.jit(jax.vmap(exp.evaluate_worker))(state, jax.random.split(jax.random.key(1), 2))
    assert set(out) == {"return"}
    assert np.all(np.asarray(out["return"]) < 0)  # Pendulum's rewards are <= 0
    env = jdo.rl.make_env("Pendulum-v1", max_steps_in_episode=20)
    for w in range(2):  # the actor's action, no noise: what evaluate_policy's greedy mode gives
        params = jax.tree.map(lambda x, w=w: x[w], state.params)
        key = jax.random.split(jax.random.split(jax.random.key(1), 2)[w])[0]
        returns = jdo.rl.evaluate_policy(
            env,
            exp.apply,
            params,
            key,
            num_episodes=3,
            greedy=True,
            policy=jdo.rl.deterministic_policy(env.action_space),
        )
        np.testing.assert_allclose(out["return"][w], np.mean(returns), rtol=1e-6)
