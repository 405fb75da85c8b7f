"""RL throughput and sample efficiency on CartPole-v1.

    python -m experiments.bench.rl [--rounds 10] [--seeds 3] [--out experiments/bench/results]

1. Environment steps per second of acting (policy + env step, T=128 steps of N env copies):
   jdo's jitted rollout (gymnax inside jit) vs gymnasium's sync vector env (`make_vec`,
   N copies) driving the SAME jitted policy one step at a time; and of jdo's whole PPO
   update (rollout + GAE + 4 epochs x 8 minibatches).
2. jdo PPO vs a plain single-file jitted PPO written below (gymnax + jnp + optax, no jdo): the
   same network sizes, hyperparameters and work per update (T=128 x N envs, 4 epochs x 8
   minibatches, final-observation bootstrapping). jdo with 1 worker vs plain with N envs, and
   jdo with 8 vmapped workers (all-reduce) vs plain with 8N envs. Goal: jdo >= 0.8x.
   Each call runs 4 updates in a lax.scan; interleaved rounds, min of per-round minima, an A/A
   control (plain vs a second jit of itself).
3. Environment steps until every worker's policy averages >= 475 over 100 fresh episodes
   (``jdo.train.solve.train_until``) for PPO (all-reduce, gossip), A2C and A3C-style staleness
   0 and 4, over several seeds; learning curves to rl_curves.png.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

from experiments.bench.common import interleaved_min, simulate_cpu_devices

W, N, T, EPOCHS, MB, UPDATES_PER_CALL = 8, 4, 128, 4, 8, 4


# ----------------------------------------------------------------------------------------------
# The plain single-file PPO baseline (no jdo): gymnax, jnp, optax
# ----------------------------------------------------------------------------------------------


def plain_ppo(num_envs: int, lr: float = 1e-3):
    """``(init(key) -> carry, run(carry, key) -> carry)``: UPDATES_PER_CALL PPO updates."""
    import gymnax
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    env, env_params = gymnax.make("CartPole-v1")
    gamma, lam, clip_eps, vf, ent = 0.99, 0.95, 0.2, 0.5, 0.01

    def dense(key, n_in, n_out, scale):
        w = jax.nn.initializers.orthogonal(scale)(key, (n_in, n_out), jnp.float32)
        return {"w": w, "b": jnp.zeros((n_out,), jnp.float32)}

    def init_params(key):
        k = jax.random.split(key, 6)
        s2 = float(np.sqrt(2))
        actor = [dense(k[0], 4, 64, s2), dense(k[1], 64, 64, s2), dense(k[2], 64, 2, 0.01)]
        critic = [dense(k[3], 4, 64, s2), dense(k[4], 64, 64, s2), dense(k[5], 64, 1, 1.0)]
        return {"actor": actor, "critic": critic}

    def mlp(layers, x):
        for layer in layers[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return x @ layers[-1]["w"] + layers[-1]["b"]

    def net(p, obs):
        return mlp(p["actor"], obs), mlp(p["critic"], obs)[:, 0]

    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(lr))

    def init(key):
        p_key, e_key = jax.random.split(key)
        params = init_params(p_key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(e_key, num_envs), env_params
        )
        return params, tx.init(params), state, obs

    def update(carry, key):
        params, opt_state, env_state, obs = carry
        r_key, p_key = jax.random.split(key)

        def act(c, k):
            env_state, obs = c
            a_key, s_key = jax.random.split(k)
            logits, value = net(params, obs)
            action = jax.random.categorical(a_key, logits)
            logp = jax.nn.log_softmax(logits)[jnp.arange(num_envs), action]
            nobs, env_state, reward, term, trunc, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(s_key, num_envs), env_state, action, env_params)
            term = term.astype(bool)
            done = term | trunc.astype(bool)
            return (env_state, nobs), (
                obs,
                action,
                logp,
                value,
                reward,
                term,
                done,
                info["final_observation"],
            )

        (env_state, obs), (o, a, lp, v, r, term, done, fin) = jax.lax.scan(
            act, (env_state, obs), jax.random.split(r_key, T)
        )
        next_v = net(params, fin.reshape(T * num_envs, 4))[1].reshape(T, num_envs)
        delta = r + gamma * (1.0 - term) * next_v - v

        def back(adv, x):
            d, nd = x
            adv = d + gamma * lam * nd * adv
            return adv, adv

        _, adv = jax.lax.scan(back, jnp.zeros(num_envs), (delta, 1.0 - done), reverse=True)
        B = T * num_envs
        data = (o.reshape(B, 4), a.reshape(B), lp.reshape(B), adv.reshape(B), (adv + v).reshape(B))

        def loss_fn(p, mb):
            o, a, lp_old, adv, ret = mb
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            logits, value = net(p, o)
            logp_all = jax.nn.log_softmax(logits)
            ratio = jnp.exp(logp_all[jnp.arange(o.shape[0]), a] - lp_old)
            surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
            entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1).mean()
            return -surr.mean() + vf * 0.5 * jnp.mean((value - ret) ** 2) - ent * entropy

        def sgd(c, idx):
            p, s = c
            loss, g = jax.value_and_grad(loss_fn)(p, jax.tree.map(lambda x: x[idx], data))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        perms = jax.vmap(lambda k: jax.random.permutation(k, B))(jax.random.split(p_key, EPOCHS))
        (params, opt_state), losses = jax.lax.scan(
            sgd, (params, opt_state), perms.reshape(EPOCHS * MB, B // MB)
        )
        return (params, opt_state, env_state, obs), losses.mean()

    def run(carry, key):
        return jax.lax.scan(update, carry, jax.random.split(key, UPDATES_PER_CALL))

    return init, run


# ----------------------------------------------------------------------------------------------


def throughput(rounds: int, calls: int) -> tuple[list[dict], list[dict]]:
    import gymnasium
    import jax
    import numpy as np
    import optax

    import jdo
    from jdo.rl import episode_stats_init, make_network, make_policy, make_vec_env, ppo, rollout

    # -- 1. acting: jdo's jitted rollout vs gymnasium's vector env with the same jitted policy
    def acting(num_envs):
        env = make_vec_env("CartPole-v1", num_envs)
        apply, params = make_network(env)
        policy = make_policy(env.action_space)
        obs, state = env.reset(jax.random.key(0))
        roll = jax.jit(
            lambda s, o, k: rollout(env, policy, apply, params, s, o, k, T, episode_stats_init())[
                :2
            ]
        )

        @jax.jit
        def act(obs, key):
            return policy.sample(key, apply(params, obs)[0])

        gym_env = gymnasium.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
        gym_obs, _ = gym_env.reset(seed=0)
        gym_state = {"obs": gym_obs, "key": jax.random.key(1)}

        def gym_rollout():
            for _ in range(T):
                gym_state["key"], k = jax.random.split(gym_state["key"])
                action = np.asarray(act(gym_state["obs"], k))
                gym_state["obs"], *_ = gym_env.step(action)
            return gym_state["obs"]

        times = interleaved_min(
            {"jdo": functools.partial(roll, state, obs, jax.random.key(2)), "gym": gym_rollout},
            rounds=rounds,
            calls=max(1, calls // 5),
        )
        gym_env.close()
        steps = T * num_envs
        return {"envs": num_envs, "jdo": steps / times["jdo"], "gym": steps / times["gym"]}

    acting_rows = [acting(n) for n in (N, N * W)]

    # -- 2. training: jdo PPO vs the plain PPO -------------------------------------------------
    train_rows = []
    for workers in (1, W):
        env = make_vec_env("CartPole-v1", N)
        apply, params = make_network(env)
        algo = ppo(env, apply, optax.adam(1e-3), num_steps=T, epochs=EPOCHS, num_minibatches=MB)
        init = jax.jit(jax.vmap(algo.init, in_axes=(None, 0), axis_name=jdo.WORKERS))
        step = jax.vmap(algo.step, in_axes=(0, None, 0), axis_name=jdo.WORKERS)

        @jax.jit
        def jdo_run(state, key, step=step, workers=workers):
            keys = jax.random.split(key, (UPDATES_PER_CALL, workers))
            return jax.lax.scan(lambda s, k: step(s, None, k), state, keys)

        jdo_state = init(params, jax.random.split(jax.random.key(0), workers))
        p_init, p_run = plain_ppo(N * workers)
        plain_state = jax.jit(p_init)(jax.random.key(0))
        plain, plain_again = jax.jit(p_run), jax.jit(p_run)
        times = interleaved_min(
            {
                "plain": functools.partial(plain, plain_state, jax.random.key(1)),
                "plain_again": functools.partial(plain_again, plain_state, jax.random.key(1)),
                "jdo": functools.partial(jdo_run, jdo_state, jax.random.key(1)),
            },
            rounds=rounds,
            calls=calls,
        )
        steps = UPDATES_PER_CALL * T * N * workers
        train_rows.append(
            {
                "workers": workers,
                "envs": N * workers,
                "jdo": steps / times["jdo"],
                "plain": steps / times["plain"],
                "A/A": times["plain_again"] / times["plain"],
            }
        )
    return acting_rows, train_rows


def sample_efficiency(seeds: int):
    import jdo
    from jdo.train.solve import train_until

    ppo_cfg = {
        "algorithm": "ppo",
        "workers": W,
        "num_envs": N,
        "learning_rate": 1e-3,
        "normalize_reward_gamma": 0.99,
        "algorithm_kwargs": {"num_steps": T, "num_minibatches": MB},
    }
    a2c_cfg = {
        "algorithm": "a2c",
        "workers": W,
        "num_envs": N,
        "learning_rate": 3e-3,
        "normalize_reward_gamma": 0.99,
        "algorithm_kwargs": {"num_steps": 16, "gae_lambda": 0.95},
    }
    a3c = lambda tau: {
        **a2c_cfg,
        "algorithm": "a3c",
        "algorithm_kwargs": {**a2c_cfg["algorithm_kwargs"], "staleness": tau},
    }
    gossip = {
        **ppo_cfg,
        "topology": jdo.topology.ring(W),
        "algorithm_kwargs": {**ppo_cfg["algorithm_kwargs"], "communication": "gossip"},
    }
    runs = {
        "PPO, all-reduce": (ppo_cfg, 10, 150),
        "PPO, gossip (ring)": (gossip, 10, 150),
        "A2C, all-reduce": (a2c_cfg, 25, 1500),
        "A3C-style, τ=0": (a3c(0), 25, 1500),
        "A3C-style, τ=4": (a3c(4), 25, 1500),
    }
    results = {}
    for name, (cfg, every, most) in runs.items():
        results[name] = [
            train_until(cfg, target=475.0, seed=s, eval_every=every, max_updates=most)
            for s in range(seeds)
        ]
        r = results[name]
        print(
            f"  {name}: env steps {[int(x['env_steps']) for x in r]}, "
            f"solved {[x['solved'] for x in r]}",
            flush=True,
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("experiments", "bench", "results"))
    args = parser.parse_args(argv)
    simulate_cpu_devices(W)
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t0 = time.perf_counter()
    acting, training = throughput(args.rounds, args.calls)
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    lines = [
        f"CartPole-v1 on {device} ({os.cpu_count()} CPU cores); `python -m experiments.bench.rl`",
        "",
        "**Environment steps per second**: gymnasium's sync vector env driving jdo's jitted "
        "policy one step at a time (acting only) vs jdo's jitted rollout (acting only) and "
        f"jdo's whole PPO update (acting + GAE + {EPOCHS} epochs x {MB} minibatches; "
        f"{N} envs per worker, 1 or {W} workers)",
        "",
        "| env copies | gymnasium + jitted policy | jdo rollout | jdo PPO training "
        "| rollout ÷ gymnasium | training ÷ gymnasium |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a, t in zip(acting, training, strict=True):
        lines.append(
            f"| {a['envs']} | {a['gym']:,.0f} | {a['jdo']:,.0f} | {t['jdo']:,.0f} | "
            f"{a['jdo'] / a['gym']:.1f}x | {t['jdo'] / a['gym']:.1f}x |"
        )
    lines += [
        "",
        f"**jdo PPO vs a plain single-file jitted PPO** (same network, hyperparameters "
        f"and work; T={T}, {UPDATES_PER_CALL} updates per call; env steps/s; the plain PPO "
        f"has all the env copies in one learner)",
        "",
        "| jdo workers (vmap) | env copies | jdo PPO | plain PPO | jdo ÷ plain | A/A control |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in training:
        lines.append(
            f"| {r['workers']} | {r['envs']} | {r['jdo']:,.0f} | {r['plain']:,.0f} | "
            f"{r['jdo'] / r['plain']:.2f} | {r['A/A']:.2f} |"
        )
    print("\n".join(lines), flush=True)

    results = sample_efficiency(args.seeds)
    base = np.median([x["env_steps"] for x in results["A3C-style, τ=0"]])
    lines += [
        "",
        f"**Environment steps until every worker averages >= 475 over 100 fresh "
        f"episodes** ({W} workers x {N} envs; evaluated every 10 PPO / 25 A2C updates; "
        f"{args.seeds} seeds)",
        "",
        "| method | env steps per seed | median | solved | training s (median) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, runs in results.items():
        steps = [x["env_steps"] for x in runs]
        lines.append(
            f"| {name} | {', '.join(f'{s / 1e3:.0f}k' for s in steps)} | "
            f"{np.median(steps) / 1e3:.0f}k | {sum(x['solved'] for x in runs)}/{len(runs)} | "
            f"{np.median([x['train_s'] for x in runs]):.1f} |"
        )
    tau4 = np.median([x["env_steps"] for x in results["A3C-style, τ=4"]])
    lines += [
        "",
        f"A3C-style staleness τ=4 needed {tau4 / base:.2f}x the env steps of τ=0 "
        f"(medians over {args.seeds} seeds). Total benchmark time "
        f"{time.perf_counter() - t0:.0f} s.",
    ]
    table = "\n".join(lines)
    print(table)

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, runs in results.items():
        c = runs[0]["curve"]
        dashed = name.startswith("A3C-style, τ=0")  # it is A2C exactly: the curves coincide
        ax.plot(c[:, 0], c[:, 1], marker="o", ms=3, ls="--" if dashed else "-", label=name)
    ax.axhline(475, color="gray", ls=":", lw=1)
    ax.set(
        xlabel="environment steps (all workers)",
        ylabel="evaluation return (worst worker)",
        title=f"CartPole-v1, {W} workers x {N} envs (seed 0)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, "rl_curves.png"), dpi=110)
    with open(os.path.join(args.out, "rl.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
