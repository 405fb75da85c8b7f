"""Reinforcement learning: JAX-native environments, actor-critic networks, rollouts, and
per-worker RL algorithms (A2C, PPO, bounded-staleness A3C) over the worker axis."""

from jdo.rl.a2c import A3CState, ActorCriticState, a2c, a3c, actor_critic_loss
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
from jdo.rl.networks import ActorCritic, Policy, make_policy
from jdo.rl.rollout import (
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
    "A3CState",
    "ActorCritic",
    "ActorCriticState",
    "EpisodeStats",
    "Policy",
    "Transition",
    "a2c",
    "a3c",
    "actor_critic_loss",
    "advantages_of",
    "episode_stats_init",
    "episode_stats_metrics",
    "episode_stats_update",
    "gae",
    "make_policy",
    "rollout",
    "ENVS",
    "ActionSpace",
    "Env",
    "EnvState",
    "RunningMoments",
    "make_env",
    "make_vec_env",
    "moments_init",
    "moments_update",
    "normalize_observation",
    "normalize_reward",
    "vectorize",
]
