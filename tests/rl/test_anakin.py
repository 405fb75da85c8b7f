"""make_train: a pure train(key) that vmaps over seeds; evaluate_policy; train_until's checks."""

import inspect

import hydra.utils
import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

import jdo
from jdo.checks import InvalidArgument
from jdo.rl import evaluate_policy, make_train
from jdo.train.solve import train_until

SMALL = {
    "workers": 2,
    "num_envs": 2,
    "updates": 3,
    "hidden": (8,),
    "algorithm_kwargs": {"num_steps": 8, "num_minibatches": 2, "epochs": 1},
}


@pytest.mark.slow
def test_seeds_vmapped_equal_seeds_run_one_by_one():
    train = make_train(SMALL)
    keys = jax.random.split(jax.random.key(0), 2)
    both = jax.jit(jax.vmap(train))(keys)
    assert both["metrics"]["loss"].shape == (2, 3, 2)  # [seeds, updates, workers]
    for s in range(2):
        one = jax.jit(train)(keys[s])
        for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a[s], b, rtol=1e-5, atol=1e-6)
    p = jax.tree.leaves(both["state"].params)[0]
    assert not np.allclose(p[0], p[1])  # the seeds differ
    np.testing.assert_array_equal(both["metrics"]["env_steps"][0, :, 0], [32.0, 64.0, 96.0])


def test_evaluate_policy_runs_every_episode_to_its_end():
    train = make_train(SMALL)
    returns = jax.jit(
        lambda k: evaluate_policy(
            "CartPole-v1",
            train.apply,
            train.params,
            k,
            num_episodes=50,
            env_params={"max_steps_in_episode": 12},
        )
    )(jax.random.key(0))
    assert returns.shape == (50,)
    assert np.all(returns >= 1) and np.all(returns <= 12)
    assert np.any(returns == 12)  # an untrained policy often lasts 12 steps


def test_bad_configs_name_what_is_allowed():
    with pytest.raises(InvalidArgument, match="lr is not a make_train key; allowed: "):
        make_train({"lr": 1.0})
    with pytest.raises(InvalidArgument, match="algorithm must be one of 'a2c', 'ppo', 'a3c'"):
        make_train({"algorithm": "dqn"})
    with pytest.raises(InvalidArgument, match="workers must be a positive integer"):
        make_train({"workers": 0})
    with pytest.raises(InvalidArgument, match=r"max_updates must be >= eval_every \(5\), got 2"):
        train_until(SMALL, target=1.0, eval_every=5, max_updates=2)


def test_train_until_evaluates_through_each_workers_normaliser():
    out = train_until(
        {**SMALL, "normalize_obs": True}, target=0.0, eval_every=1, max_updates=1, eval_episodes=3
    )
    assert out["solved"] and out["eval_returns"].shape == (2,)
    assert np.all((out["eval_returns"] >= 1) & (out["eval_returns"] <= 500))


def _defaults(factory):
    function = factory.__init__ if isinstance(factory, type) else factory
    return {k: p.default for k, p in inspect.signature(function).parameters.items()}


@pytest.mark.parametrize(
    "task,group,name",
    [
        ("cartpole", "algorithm", "a2c"),
        ("cartpole", "algorithm", "a3c"),
        ("cartpole", "algorithm", "ppo"),
        ("cartpole", "algorithm", "decentralized_ppo"),
        ("pendulum", "algorithm", "ddpg"),
        ("cartpole", "model", "actor_critic"),
        ("pendulum", "model", "ddpg"),
    ],
)
def test_yaml_repeats_the_factory_defaults(task, group, name, make_cfg):
    """One source of defaults: a factory's signature. The YAML the command line reads repeats
    it (decentralized_ppo is ppo with communication=gossip; topology comes from its group)."""
    node = OmegaConf.to_container(make_cfg(f"task={task}", f"{group}={name}")[group])
    defaults = _defaults(hydra.utils.get_object(node.pop("_target_")))
    node.pop("topology", None)
    if name == "decentralized_ppo":
        assert node.pop("communication") == "gossip"
    assert node and all(k in defaults for k in node), (sorted(node), sorted(defaults))
    for key, value in node.items():
        want = defaults[key]
        assert (list(want) if isinstance(want, tuple) else want) == value, (key, value, want)


def test_make_train_defaults_agree_with_the_cartpole_command_line(make_cfg):
    """make_train's own settings are those of `task=cartpole algorithm=ppo`; its algorithm gets
    the factory's defaults, as the YAML (above)."""
    cfg = make_cfg("task=cartpole", "algorithm=ppo")
    train = make_train({"updates": 1})
    got = train.config
    assert (got["env"], got["num_envs"], got["normalize_obs"], got["env_params"]) == (
        cfg.task.env,
        cfg.task.num_envs,
        cfg.task.normalize_obs,
        dict(cfg.task.env_params),
    )
    assert got["normalize_reward_gamma"] == cfg.task.normalize_reward_gamma
    assert list(got["hidden"]) == list(cfg.model.hidden) and got["workers"] == cfg.workers
    assert got["learning_rate"] == cfg.optimizer.learning_rate and got["algorithm"] == "ppo"
    assert got["algorithm_kwargs"] == {}  # so ppo's own defaults: num_minibatches 8 as in YAML
    assert _defaults(jdo.rl.ppo)["num_minibatches"] == cfg.algorithm.num_minibatches == 8


def test_continuous_actions_train_end_to_end():
    """PPO on Pendulum (Gaussian policy, clipped torques, truncation only): finite, it moves."""
    train = make_train(
        {**SMALL, "env": "Pendulum-v1", "normalize_obs": True, "normalize_reward_gamma": 0.99}
    )
    out = jax.jit(train)(jax.random.key(0))
    assert np.all(np.isfinite(out["metrics"]["loss"]))
    before, after = jax.tree.leaves(train.params), jax.tree.leaves(out["state"].params)
    assert any(not np.allclose(a[0], b) for a, b in zip(after, before, strict=True))
    assert "log_std" in out["state"].params
