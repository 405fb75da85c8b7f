"""PPO: W workers with all-reduce equal one worker on the concatenated batch (vmap and
shard_map), the loss against a numpy reference, the liftings agree on whole steps, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdo
from jdo.checks import InvalidArgument, WrongType
from jdo.lifting import lift
from jdo.rl import (
    advantages_of,
    episode_stats_init,
    make_network,
    make_policy,
    make_ppo_update,
    make_vec_env,
    minibatch_indices,
    ppo,
    ppo_loss,
    rollout,
)
from jdo.rl.a2c import flatten_batch, make_tx

W, N, T, EPOCHS, MB = 8, 4, 16, 2, 4


@pytest.fixture(scope="module")
def setup():
    env = make_vec_env("CartPole-v1", N, max_steps_in_episode=12)
    apply, params = make_network(env, (32, 32), seed=3)
    policy = make_policy(env.action_space)

    def worker_batch(key):  # one worker's flat batch from a real rollout
        r_key, e_key = jax.random.split(key)
        obs, state = env.reset(e_key)
        _, _, traj, _ = rollout(
            env, policy, apply, params, state, obs, r_key, T, episode_stats_init()
        )
        adv, ret = advantages_of(traj, apply, params, gamma=0.99, lam=0.95)
        return flatten_batch(traj, adv, ret)

    keys = jax.random.split(jax.random.key(0), W)
    batches = jax.jit(jax.vmap(worker_batch))(keys)  # leaves [W, T·N, ...]
    indices = jax.vmap(lambda k: minibatch_indices(k, T * N, EPOCHS, MB))(
        jax.random.split(jax.random.key(1), W)
    )  # [W, EPOCHS, MB, T·N/MB]
    assert np.asarray(batches["advantage"]).std() > 0
    return env, apply, params, policy, batches, indices


def _update(apply, policy):
    tx = make_tx(optax.adam(3e-3), "all_reduce", None, 0.5, jdo.WORKERS)
    update = make_ppo_update(
        apply,
        policy,
        tx,
        clip_eps=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
        normalize_advantages=True,
        global_advantage_stats=True,
    )
    return tx, update


@pytest.mark.parametrize("lifting", ["vmap", "shard_map"])
def test_all_reduce_workers_equal_one_worker_on_the_concatenated_batch(setup, lifting, mesh8):
    """One PPO update (2 epochs x 4 minibatches) of 8 workers with all-reduce equals one worker
    whose batch is the 8 batches concatenated and whose minibatch m of epoch e is the union of
    the workers' minibatches m of epoch e."""
    env, apply, params, policy, batches, indices = setup
    tx, update = _update(apply, policy)
    opt_state = tx.init(params)
    multi = jax.jit(
        lift(
            update,
            lifting,
            mesh=mesh8 if lifting == "shard_map" else None,
            in_axes=(None, None, 0, 0),
        )
    )
    p_multi, _, m_multi = multi(params, opt_state, batches, indices)

    B = T * N
    concat = jax.tree.map(lambda x: x.reshape(W * B, *x.shape[2:]), batches)
    idx = np.asarray(indices) + (np.arange(W) * B)[:, None, None, None]
    single_idx = np.transpose(idx, (1, 2, 0, 3)).reshape(EPOCHS, MB, W * B // MB)
    single = jax.jit(
        jax.vmap(update, in_axes=(None, None, None, None), axis_name=jdo.WORKERS, axis_size=1)
    )
    p_single, _, m_single = single(params, opt_state, concat, jnp.asarray(single_idx))

    moved = 0.0
    for a, b, p0 in zip(
        jax.tree.leaves(p_multi), jax.tree.leaves(p_single), jax.tree.leaves(params), strict=True
    ):
        for w in range(W):
            np.testing.assert_allclose(a[w], b[0], rtol=1e-5, atol=1e-5)
        moved = max(moved, float(np.abs(np.asarray(b[0]) - np.asarray(p0)).max()))
    assert moved > 1e-3  # the update did something
    np.testing.assert_allclose(np.mean(m_multi["loss"]), m_single["loss"][0], rtol=1e-5, atol=1e-6)


def test_ppo_loss_equals_numpy(setup):
    env, apply, params, policy, batches, _ = setup
    batch = jax.tree.map(lambda x: x[0], batches)
    batch = {**batch, "log_prob": batch["log_prob"] - 0.3 * np.sin(np.arange(T * N))}  # ρ ≠ 1
    loss, m = ppo_loss(
        apply, policy, params, batch, clip_eps=0.2, value_coef=0.7, entropy_coef=0.05
    )
    logits, value = (np.asarray(x, np.float64) for x in apply(params, batch["obs"]))
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = logp_all[np.arange(T * N), np.asarray(batch["action"])]
    ratio = np.exp(logp - np.asarray(batch["log_prob"]))
    adv = np.asarray(batch["advantage"])
    surr = np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
    ent = -(np.exp(logp_all) * logp_all).sum(-1)
    expect = -surr.mean() + 0.7 * 0.5 * np.mean((value - np.asarray(batch["return"])) ** 2)
    expect -= 0.05 * ent.mean()
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    assert 0 < float(m["clip_fraction"]) < 1


def test_whole_steps_agree_under_vmap_and_shard_map(mesh8):
    """Rollouts, GAE and gossip updates: two PPO steps of 8 workers over a ring, lifted both
    ways, give the same state (and the workers differ: gossip does not average exactly)."""
    env = make_vec_env("CartPole-v1", 2)
    apply, params = make_network(env, (16,))
    algo = ppo(
        env,
        apply,
        optax.adam(1e-2),
        communication="gossip",
        topology=jdo.topology.ring(W),
        num_steps=8,
        epochs=2,
        num_minibatches=2,
    )
    keys = jax.random.split(jax.random.key(0), W)
    out = {}
    for lifting in ("vmap", "shard_map"):
        mesh = mesh8 if lifting == "shard_map" else None
        init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
        step = jax.jit(lift(algo.step, lifting, mesh=mesh, in_axes=(0, None, 0)))
        state = init(params, keys)
        for t in range(2):
            state, metrics = step(state, None, jax.random.split(jax.random.key(t + 1), W))
        out[lifting] = (state, metrics)
    for a, b in zip(jax.tree.leaves(out["vmap"]), jax.tree.leaves(out["shard_map"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    w0 = jax.tree.leaves(out["vmap"][0].params)[0]
    assert not np.allclose(w0[0], w0[1])
    assert float(out["vmap"][1]["env_steps"][0]) == 2 * 8 * 2 * W


def test_bad_arguments_name_what_is_allowed():
    env = make_vec_env("CartPole-v1", 3)
    apply, _ = make_network(env, (8,))
    adam = optax.adam(1e-3)
    cases = [
        (
            dict(num_steps=8, num_minibatches=5),
            InvalidArgument,
            "num_minibatches",
            r"must divide num_steps · num_envs \(8 · 3 = 24\), got 5",
        ),
        (
            dict(communication="ring"),
            InvalidArgument,
            "communication",
            "must be one of 'all_reduce', 'gossip'",
        ),
        (dict(communication="gossip"), WrongType, "topology", "must be a jdo.topology.Topology"),
        (dict(epochs=0), InvalidArgument, "epochs", "must be a positive integer"),
        (dict(clip_eps=0.0), InvalidArgument, "clip_eps", "must be a positive number"),
    ]
    for kwargs, kind, argument, message in cases:
        with pytest.raises(kind, match=message) as e:
            ppo(env, apply, adam, **kwargs)
        assert e.value.argument == argument
    with pytest.raises(InvalidArgument, match="env must be a vector env"):
        ppo(jdo.rl.make_env("CartPole-v1"), apply, adam)
