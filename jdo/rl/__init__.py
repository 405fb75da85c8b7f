"""Reinforcement learning: JAX-native environments, actor-critic networks, rollouts, and
per-worker RL algorithms (A2C, PPO, bounded-staleness A3C) over the worker axis."""

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

__all__ = [
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
