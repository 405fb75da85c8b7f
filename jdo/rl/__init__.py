"""Reinforcement learning: JAX-native environments, actor-critic networks, rollouts, and
per-worker RL algorithms (A2C, PPO, bounded-staleness A3C, DDPG) over the worker axis; host
gymnasium environments with Sebulba actor threads (``jdo.rl.host``) and threaded asynchronous
A3C (``jdo.rl.async_a3c``)."""

from jdo.rl.a2c import A3CState, ActorCriticState, a2c, a3c, actor_critic_loss
from jdo.rl.anakin import ALGORITHMS, make_network, make_train
from jdo.rl.async_a3c import async_a3c
from jdo.rl.ddpg import DDPGNetworks, DDPGState, ReplayBuffer, ddpg, make_ddpg_networks
from jdo.rl.envs import (
    ENVS,
    ActionSpace,
    Env,
    EnvState,
    RunningMoments,
    make_env,
    make_vec_env,
    moments_init,
    moments_update,
    normalize_observation,
    normalize_reward,
    vectorize,
)
from jdo.rl.evaluate import evaluate_policy, make_evaluate_worker
from jdo.rl.networks import ActorCritic, Policy, deterministic_policy, make_policy
from jdo.rl.ppo import PPOState, make_ppo_update, minibatch_indices, ppo, ppo_loss
from jdo.rl.rollout import (
    EPISODE_WINDOW,
    EpisodeStats,
    Transition,
    advantages_of,
    episode_stats_init,
    episode_stats_metrics,
    episode_stats_update,
    gae,
    rollout,
)

__all__ = [
    "DDPGNetworks",
    "DDPGState",
    "ReplayBuffer",
    "async_a3c",
    "ddpg",
    "make_ddpg_networks",
    "EPISODE_WINDOW",
    "A3CState",
    "ALGORITHMS",
    "ActionSpace",
    "ActorCritic",
    "ActorCriticState",
    "ENVS",
    "Env",
    "EnvState",
    "EpisodeStats",
    "PPOState",
    "Policy",
    "RunningMoments",
    "Transition",
    "a2c",
    "a3c",
    "actor_critic_loss",
    "advantages_of",
    "episode_stats_init",
    "episode_stats_metrics",
    "episode_stats_update",
    "evaluate_policy",
    "make_evaluate_worker",
    "deterministic_policy",
    "gae",
    "make_env",
    "make_network",
    "make_policy",
    "make_ppo_update",
    "make_train",
    "make_vec_env",
    "minibatch_indices",
    "moments_init",
    "moments_update",
    "normalize_observation",
    "normalize_reward",
    "ppo",
    "ppo_loss",
    "rollout",
    "vectorize",
]
