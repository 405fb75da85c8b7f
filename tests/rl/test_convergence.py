"""CartPole-v1 is solved: every worker's policy averages >= 475 over 100 fresh episodes
(sampled actions) within a budget of updates, for A2C and PPO with all-reduce and with gossip,
and for A3C-style training with staleness 4 (staleness 0 is A2C: compare their env steps with
``-s``).

PPO with all-reduce and with gossip, A2C with all-reduce and A3C-style with staleness 4 are
solved by ``notebooks/05_rl.ipynb`` (the same configs, seed and budgets; its asserts fail on an
unsolved run), which tests/test_notebooks.py executes in the slow suite: this file runs what
the notebook does not, not the same training twice.

Run with ``-s`` to see the env steps and seconds. 8 workers x 4 envs each, seed 0; the
hyperparameters are the ones in experiments/bench/rl.py (which reports 3 seeds).
"""

import pytest

import jdo
from jdo.train.solve import train_until

W = 8
A2C = {
    "algorithm": "a2c",
    "workers": W,
    "num_envs": 4,
    "learning_rate": 3e-3,
    "normalize_reward_gamma": 0.99,
    "algorithm_kwargs": {"num_steps": 16, "gae_lambda": 0.95},
}


def gossip(cfg):
    kwargs = {**cfg["algorithm_kwargs"], "communication": "gossip"}
    return {**cfg, "topology": jdo.topology.ring(W), "algorithm_kwargs": kwargs}


def _solve(name, cfg, eval_every, max_updates):
    out = train_until(cfg, target=475.0, seed=0, eval_every=eval_every, max_updates=max_updates)
    print(
        f"\n{name}: solved={out['solved']} after {out['updates']} updates, "
        f"{out['env_steps']:,.0f} env steps, {out['train_s']:.1f} s of training "
        f"(+{out['compile_s']:.0f} s compile); worst worker {out['eval_returns'].min():.1f}"
    )
    assert out["solved"], (name, out["curve"])
    assert out["eval_returns"].min() >= 475.0
    return out


@pytest.mark.slow  # tens of seconds each (compile + training + evaluations) on 2 cores
@pytest.mark.parametrize(
    "name,cfg,eval_every,max_updates",
    [("A2C gossip (ring)", gossip(A2C), 25, 1000)],
)
def test_cartpole_is_solved(name, cfg, eval_every, max_updates):
    _solve(name, cfg, eval_every, max_updates)
