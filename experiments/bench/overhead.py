"""Overhead of jdo against hand-written JAX, on what users run (issue 11).

    nice python -m experiments.bench.overhead --rounds 10 --run-rounds 5

(quick check: ``--rounds 2 --run-rounds 2``; ``--variants`` adds diagnostic rows: the chunk
without the state check, without the guard, a hand-written ``fori_loop``; the imports alone;
``--parts chunk`` or ``--parts run`` runs one part.) Writes
``experiments/bench/results/overhead.md`` (``--out``) and prints it.

**Chunk** (8 simulated CPU devices, in this process): the runner's compiled chunk of K=50 steps
of the default experiment, obtained as ``fit`` obtains it — the composed Hydra config
(``jdo/conf``), :func:`jdo.train.builder.build`, the non-finite guard, ``make_program``,
``program.init`` (no restore), ``compile_program`` — called as
``program.chunk(state, data, key, step0, n=K)``, against a hand-written ``jax.jit`` of a
``lax.scan`` over K steps doing the same work: the same MLP params, per-worker batches drawn
the same way (``fold_in(fold_in(key, worker), step)``), Adam, ``pmean`` of the gradients over 8
workers, loss and accuracy per step; lifted by ``vmap`` (the default) and by ``shard_map``
(one worker per device). Both carry their (donated) state from call to call. Before timing,
the first call's per-step losses of both are compared: they must agree (same work).

**Whole run** (subprocesses; wall time includes process start, imports and compile): the CLI
``python -m experiments.train`` (the default experiment, 1000 steps) with ``checkpoint=none``
and with the default checkpointing (a fresh run directory each time), against
:mod:`experiments.bench.handwritten_train` (plain JAX + optax: the same data, split, model,
optimizer, K=50 steps per ``lax.scan`` call, the averaged model evaluated every 250 steps). Also
each subprocess's CPU seconds, and the training seconds each reports (the summary's ``train_s``
and ``steps_per_s``).

Ratios are jdo ÷ hand-written of the minimum over rounds of per-round medians; the rounds
interleave all variants (order reversed every other round), with an A/A control (the
hand-written program against a second copy of itself) in the same rounds. Goals: chunk <= 1.05,
whole run <= 1.15.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

from experiments.bench.common import (
    interleaved_times,
    load_line,
    min_of_medians,
    min_of_mins,
    simulate_cpu_devices,
)

W, K = 8, 50
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(ROOT, "jdo", "conf")
RESULTS = os.path.join(ROOT, "experiments", "bench", "results", "overhead.md")


# ----------------------------------------------------------------------------------------------
# The chunk: jdo's compiled chunk vs a hand-written jit + scan
# ----------------------------------------------------------------------------------------------


def compose(*overrides: str):
    """The real default config with ``overrides``, composed as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@dataclasses.dataclass
class Setup:
    """A compiled chunk with its inputs: ``fn(state, *args, step0[, n]) -> (state, ...)``."""

    fn: object
    state: object
    args: tuple
    traced_n: bool  # fn takes the step count n as its last argument
    step: int = 0

    def __call__(self):
        import jax.numpy as jnp

        extra = (jnp.int32(K),) if self.traced_n else ()
        out = self.fn(self.state, *self.args, jnp.int32(self.step), *extra)
        self.state, self.step = out[0], self.step + K
        return out


def jdo_setup(cfg, guard: bool = True, check_state: bool = True):
    """The runner's chunk, built and compiled the way :func:`jdo.train.loop.fit` does (the
    private ``_program``/``restore_or_init``/``_compile`` phases, written out); ``guard`` and
    ``check_state`` off only for the diagnostic variants."""
    import jax

    from jdo.train.builder import build
    from jdo.train.guard import guard_nonfinite
    from jdo.train.mesh import lifting_of
    from jdo.train.program import compile_program, make_program, place

    exp, trainer, lifting = build(cfg), cfg.trainer, lifting_of(cfg.lifting)
    algo = guard_nonfinite(exp.algorithm, trainer.nonfinite) if guard else exp.algorithm
    program = make_program(
        exp,
        algo,
        workers=cfg.workers,
        lifting=lifting.name,
        devices=lifting.devices,
        batch_size=trainer.batch_size,
        length=trainer.log_every,
        check_state=check_state and trainer.nonfinite == "stop",
    )
    data = place(tuple(exp.data), program.per_worker)
    init_key, key = jax.random.split(jax.random.key(cfg.seed))
    keys = jax.random.split(init_key, cfg.workers)
    keys = jax.random.wrap_key_data(place(jax.random.key_data(keys), program.per_worker))
    state = program.init(exp.params, keys)
    program = compile_program(
        program,
        exp,
        algo,
        state,
        data,
        key,
        workers=cfg.workers,
        batch_size=trainer.batch_size,
        eval_batch_size=trainer.eval_batch_size,
    )
    return exp, key, Setup(program.chunk, state, (data, key), traced_n=True)


def hand_mlp(params, x):
    """The MLP of ``jdo.models.MLP``'s params dict, in plain jnp."""
    import jax

    x = x.reshape(x.shape[0], -1)
    for i in range(len(params["layers"])):
        layer = params["layers"][i]
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def hand_worker_step(optimizer, batch_size):
    """One worker's step, hand-written: ``step((params, opt_state), x, y, count, key, t)``."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss_fn(params, x, y):
        logits = hand_mlp(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    def step(state, x, y, count, key, t):
        params, opt_state = state
        k = jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index("workers")), t)
        batch_key, _ = jax.random.split(k)
        idx = jax.random.randint(batch_key, (batch_size,), 0, count)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x[idx], y[idx])
        grads = jax.lax.pmean(grads, "workers")
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, acc)

    return step


def hand_loop(step, loop: str, varying: bool = False):
    """K steps of one worker's (or, under vmap, all workers') ``step`` from ``step0``:
    ``lax.scan`` (the hand-written way) or, as a diagnostic, jdo's shape: ``fori_loop`` with a
    traced trip count ``n`` writing metric buffers of length K (``varying``: under
    ``shard_map``, where the buffers must start as per-worker values)."""
    import jax
    import jax.numpy as jnp

    if loop == "scan":

        def run(state, x, y, count, key, step0):
            body = lambda s, t: step(s, x, y, count, key, t)
            state, (loss, acc) = jax.lax.scan(body, state, step0 + jnp.arange(K))
            return state, jnp.moveaxis(loss, 0, -1), jnp.moveaxis(acc, 0, -1)  # [..., K]

        return run

    def run_n(state, x, y, count, key, step0, n):
        shape = jax.eval_shape(step, state, x, y, count, key, step0)[1][0].shape
        buffers = (jnp.zeros((K, *shape)), jnp.zeros((K, *shape)))
        if varying:
            buffers = jax.lax.pcast(buffers, "workers", to="varying")

        def body(i, carry):
            state, (loss_b, acc_b) = carry
            state, (loss, acc) = step(state, x, y, count, key, step0 + i)
            return state, (loss_b.at[i].set(loss), acc_b.at[i].set(acc))

        state, (loss, acc) = jax.lax.fori_loop(0, n, body, (state, buffers))
        return state, jnp.moveaxis(loss, 0, -1), jnp.moveaxis(acc, 0, -1)

    return run_n


def hand_setup(exp, key, lifting: str, loop: str = "scan") -> Setup:
    """The hand-written chunk (plain jax.jit, vmap / shard_map, lax.scan) on ``exp``'s data and
    initial params, with the same optimizer and batch size as the default config."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    step = hand_worker_step(optax.adam(1e-3), 32)
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (W, *p.shape)), exp.params)
    state = (params, jax.vmap(optax.adam(1e-3).init)(params))
    arrays = tuple(exp.data)  # x [W, n, 8, 8, 1], y [W, n], count [W]
    if lifting == "vmap":
        lifted = jax.vmap(step, in_axes=(0, 0, 0, 0, None, None), axis_name="workers")
        fn = hand_loop(lifted, loop)
        state, arrays = jax.device_put((state, arrays))
    else:
        mesh = jax.make_mesh((W,), ("workers",), axis_types=(AxisType.Auto,))
        inner = hand_loop(step, loop, varying=True)

        def per_device(state, x, y, count, *shared):
            one = lambda t: jax.tree.map(lambda a: a[0], t)
            out = inner(one(state), one(x), one(y), one(count), *shared)
            return jax.tree.map(lambda a: a[None], out)

        spec = P("workers")
        shared = (P(),) * (2 if loop == "scan" else 3)
        fn = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) * 4 + shared, out_specs=spec)
        state, arrays = jax.device_put((state, arrays), NamedSharding(mesh, spec))
    return Setup(jax.jit(fn, donate_argnums=0), state, (*arrays, key), traced_n=loop != "scan")


def same_work(jdo_out, hand_out) -> float:
    """The largest relative difference between the two chunks' per-step losses ([W, K])."""
    import numpy as np

    a = np.asarray(jdo_out[1]["loss"], np.float64)
    b = np.asarray(hand_out[1], np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def chunk_rows(liftings, rounds: int, calls: int, variants: bool) -> list[dict]:
    rows = []
    for lifting in liftings:
        cfg = compose(f"lifting={lifting}")
        exp, key, ours = jdo_setup(cfg)
        setups = {"hand": hand_setup(exp, key, lifting)}
        setups["hand_again"], setups["jdo"] = hand_setup(exp, key, lifting), ours
        if variants:
            setups["jdo, no state check"] = jdo_setup(cfg, check_state=False)[2]
            setups["jdo, no guard, no state check"] = jdo_setup(cfg, False, False)[2]
            setups["hand, fori_loop(n) + buffers"] = hand_setup(exp, key, lifting, "fori")
        first = {name: setup() for name, setup in setups.items()}  # compile, run, check
        difference = same_work(first["jdo"], first["hand"])
        if not difference <= 1e-4:
            raise AssertionError(
                f"{lifting}: jdo's and the hand-written chunk's losses differ "
                f"by {difference:.3g} (relative): not the same work"
            )
        times = interleaved_times(setups, rounds=rounds, calls=calls, warmup=False)
        best = {name: min_of_medians(t) for name, t in times.items()}
        fastest = {name: min_of_mins(t) for name, t in times.items()}
        rows += [
            {
                "lifting": lifting,
                "variant": name,
                "hand_ms": 1e3 * best["hand"],
                "ms": 1e3 * best[name],
                "ratio": best[name] / best["hand"],
                "ratio_fastest": fastest[name] / fastest["hand"],
                "loss_diff": difference,
            }
            for name in setups
            if name != "hand"
        ]
    return rows


# ----------------------------------------------------------------------------------------------
# The whole run: the CLI vs a hand-written script, as subprocesses
# ----------------------------------------------------------------------------------------------


class Process:
    """A command run as a subprocess per call: ``argv(i)`` for the i-th call of any process
    (a fresh run directory each time, so the CLI never resumes), ``report(stdout, i)`` the
    figures the run printed or wrote."""

    def __init__(self, argv, report, env):
        self.argv, self.report, self.env, self.reports = argv, report, env, []

    def __call__(self):
        i = next(CALLS)
        argv = self.argv(i)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-3000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{tail}")
        cpu_s = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
        self.reports.append({"cpu_s": cpu_s, **self.report(result.stdout, i)})
        return result


CALLS = iter(range(10**9))


IMPORTS = {  # --variants: what the two programs import before any work
    "import only: the CLI's modules": "import jdo.conf, jdo.train.cli, jdo.train.runner",
    "import only: the script's modules": "import jax, optax, sklearn.datasets",
}
FIGURES = ("cpu_s", "train_s", "compile_s")


def run_processes(steps: int, env: dict, tmp: str, variants: bool) -> dict[str, Process]:
    run_dir = lambda i: os.path.join(tmp, f"run{i}")

    def summary(_stdout, i):
        with open(os.path.join(run_dir(i), "summary.json"), encoding="utf-8") as f:
            return json.load(f)

    def cli(*overrides):
        return Process(
            lambda i: [
                *(sys.executable, "-m", "experiments.train", f"trainer.steps={steps}"),
                *(f"hydra.run.dir={run_dir(i)}", *overrides),
            ],
            summary,
            env,
        )

    hand = lambda i: [
        sys.executable,
        "-m",
        "experiments.bench.handwritten_train",
        f"--steps={steps}",
    ]
    last_line = lambda stdout, i: json.loads(stdout.strip().splitlines()[-1])
    processes = {
        "hand": Process(hand, last_line, env),
        "hand_again": Process(hand, last_line, env),
        "jdo, checkpoint=none": cli("checkpoint=none"),
        "jdo, default checkpointing": cli(),
    }
    if variants:
        for name, code in IMPORTS.items():
            argv = lambda i, code=code: [sys.executable, "-c", code]
            processes[name] = Process(argv, lambda stdout, i: {}, env)
    return processes


def run_rows(rounds: int, steps: int, env: dict, variants: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="jdo-bench-overhead-") as tmp:
        processes = run_processes(steps, env, tmp, variants)
        times = interleaved_times(
            processes, rounds=rounds, calls=1, block=lambda r: r, warmup=False
        )
    wall = {name: min_of_medians(t) for name, t in times.items()}
    # One run per round: the minimum over runs is the minimum of per-round medians.
    figures = {
        name: {key: min(r.get(key, math.nan) for r in p.reports) for key in FIGURES}
        for name, p in processes.items()
    }
    rows = []
    for name in processes:
        row = {"variant": name, "wall_s": wall[name], "ratio": wall[name] / wall["hand"]}
        for key in FIGURES:
            row[key] = figures[name][key]
            row[f"{key}_ratio"] = figures[name][key] / figures["hand"][key]
        row["steps_per_s"] = steps / row["train_s"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def chunk_table(rows) -> list[str]:
    lines = [
        "| lifting | variant | hand-written (ms/call) | variant (ms/call) | ÷ hand-written "
        "| ÷ hand-written, fastest calls |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = "A/A control (hand-written again)" if r["variant"] == "hand_again" else r["variant"]
        lines.append(
            f"| {r['lifting']} | {name} | {r['hand_ms']:.2f} | {r['ms']:.2f} | "
            f"{r['ratio']:.3f} | {r['ratio_fastest']:.3f} |"
        )
    return lines


def run_table(rows) -> list[str]:
    lines = [
        "| program | wall s | ÷ hand-written | CPU s | ÷ hand-written | train_s | ÷ hand-written "
        "| steps/s | compile_s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"hand": "hand-written script", "hand_again": "A/A control (the script again)"}
    cell = lambda value, digits: "–" if math.isnan(value) else f"{value:.{digits}f}"
    for r in rows:
        lines.append(
            f"| {names.get(r['variant'], r['variant'])} | {r['wall_s']:.2f} | {r['ratio']:.3f} | "
            f"{r['cpu_s']:.2f} | {r['cpu_s_ratio']:.3f} | {cell(r['train_s'], 3)} | "
            f"{cell(r['train_s_ratio'], 3)} | {cell(r['steps_per_s'], 0)} | "
            f"{cell(r['compile_s'], 2)} |"
        )
    return lines


def report(args, chunk, run, load_before: str) -> str:
    import jax

    command = "python -m experiments.bench.overhead " + " ".join(args.argv)
    lines = [
        f"# Overhead of jdo against hand-written JAX ({time.strftime('%Y-%m-%d')})",
        "",
        f"`{command.strip()}`",
        "",
        f"Machine: {load_before} at the start, {load_line().split(', ', 1)[1]} at the "
        f"end; jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}.",
        "Ratios: the minimum over rounds of per-round medians (rounds interleave every "
        "variant, order reversed every other round); on a loaded machine the fastest calls "
        "(minimum of all) are the less disturbed figure.",
    ]
    if chunk:
        difference = max(r["loss_diff"] for r in chunk)
        lines += [
            "",
            f"## Chunk of K={K} steps (goal: jdo ÷ hand-written <= 1.05)",
            "",
            f"{args.rounds} rounds x {args.calls} calls. The first call's per-step losses "
            f"of jdo and the hand-written chunk agree to {difference:.1e} "
            "(relative): the same work.",
            "",
            *chunk_table(chunk),
        ]
    if run:
        lines += [
            "",
            f"## Whole run, {args.steps} steps (goal: jdo ÷ hand-written <= 1.15)",
            "",
            f"{args.run_rounds} rounds, one run of each per round. wall s: the subprocess "
            "from start to exit (interpreter, imports, data, compile, training, eval, "
            "checkpoint); CPU s: its user + system CPU seconds (all threads; less disturbed "
            "by other processes than wall time); train_s / compile_s: as each program "
            "reports them (the CLI's summary.json), the minimum over runs.",
            "",
            *run_table(run),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the chunk part")
    parser.add_argument("--calls", type=int, default=10, help="chunk calls per round")
    parser.add_argument("--run-rounds", type=int, default=5, help="rounds of the whole-run part")
    parser.add_argument("--steps", type=int, default=1000, help="steps of a whole run")
    parser.add_argument("--parts", default="chunk,run", help="chunk, run or chunk,run")
    parser.add_argument("--liftings", default="vmap,shard_map")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="diagnostic rows: the chunk without the state check, without the guard, a hand "
        "fori_loop; the whole run's imports alone",
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    parts = set(args.parts.split(","))
    env = dict(os.environ)  # the subprocesses get the caller's environment, not ours
    load_before = load_line()
    simulate_cpu_devices(W)
    chunk = (
        chunk_rows(args.liftings.split(","), args.rounds, args.calls, args.variants)
        if "chunk" in parts
        else []
    )
    run = run_rows(args.run_rounds, args.steps, env, args.variants) if "run" in parts else []
    text = report(args, chunk, run, load_before)
    print(text)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    return {"chunk": chunk, "run": run}


if __name__ == "__main__":
    main()
