"""This machine's collectives, timed and fitted to the α–β (Hockney) model: ``cluster=measured``.

    nice python -m experiments.bench.network

(``--quick``: a few small sizes, one round, seconds; ``--parts inproc`` or ``--parts gloo``
runs one part.) Writes ``network.json``, ``network.csv`` and ``network.md`` to
``experiments/bench/results`` (``--out``; ``--quick`` writes only where ``--out`` says) and
prints the tables.

**Parts.** (a) ``inproc``: 8 simulated CPU devices in this process, one jitted ``shard_map``
per collective and size over a mesh of 8. (b) ``gloo``: 2 processes on localhost
(``jax.distributed``, one CPU device each, collectives over gloo), started by this script.

**Collectives and sizes.** ``S`` is the buffer as nccl-tests counts it (float32): all-reduce
``psum`` of an S-byte buffer per device; all-gather (``all_gather``, tiled) of S/n bytes per
device into an S-byte output; reduce-scatter (``psum_scatter``, tiled) of an S-byte input into
S/n; collective-permute (``ppermute``) of an S-byte message one step round the ring.
Sizes 1 KiB to 64 MiB in powers of 2. The compiled HLO of each function is checked to hold the
collective, and at sizes up to 1 MiB both warm-up results are compared with numpy: wrong
elements are counted and reported, not raised (gloo's reduce-scatter returned some, once).

**Timing.** Rounds interleave the sizes (forward, then backward); in each round a size runs a
fixed number of calls (more for small buffers), each waited on (``block_until_ready``), after
two warm-up calls. A size's time is the median of all its calls. Across processes each call's
time is the minimum over the two processes: the process that reaches the collective last waits
least, so its time is the collective's own (the other's includes waiting for it).

**Model.** Ring formulas (Thakur et al. 2005), as ``jdo.system`` prices them, with
``t(S) = a·α + b·S/B``: all-reduce a = 2(n−1), b = 2(n−1)/n; all-gather and reduce-scatter
a = n−1, b = (n−1)/n; collective-permute a = b = 1. α ≥ 0 and β = 1/B ≥ 0 are fitted per
collective by least squares on relative errors, Σ ((a·α + b·S·β − t)/t)², on every other size
(1 KiB, 4 KiB, …, 64 MiB); the other sizes (2 KiB, 8 KiB, …, 32 MiB) are held out and the
model's |relative error| on them is reported (goal: median ≤ 15 %).

**Bus bandwidth** (nccl-tests): algbw = S/t; busbw = algbw × 2(n−1)/n for all-reduce,
× (n−1)/n for all-gather and reduce-scatter, × 1 for a permute. For large S the ring model's
busbw tends to B.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.bench.common import load_line, simulate_cpu_devices

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute")
HLO_OP = {
    "all-reduce": "all-reduce",
    "all-gather": "all-gather",
    "reduce-scatter": "reduce-scatter",
    "collective-permute": "collective-permute",
}
KiB, MiB = 1024, 1024 * 1024
SIZES = tuple(2**k for k in range(10, 27))  # 1 KiB .. 64 MiB
QUICK_SIZES = tuple(4**k for k in range(5, 9))  # 1 KiB .. 64 KiB
CHECK_UP_TO = MiB  # results compared with numpy up to this buffer size
SPLIT_AT = MiB  # the regimes fitted apart: within the 2 MiB L2 per core here, and beyond
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "experiments", "bench", "results")
FASTEST_KEYS = ("alpha_s", "bandwidth_Bps", "held_out_median_abs_err", "held_out_max_abs_err")


# ----------------------------------------------------------------------------------------------
# The model: ring formulas, the fit, bus bandwidth (pure numpy)
# ----------------------------------------------------------------------------------------------


def coefficients(kind: str, n: int) -> tuple[float, float]:
    """(a, b) of the ring time ``a·α + b·S/B`` of ``kind`` over ``n`` workers."""
    if kind == "all-reduce":
        return 2.0 * (n - 1), 2.0 * (n - 1) / n
    if kind in ("all-gather", "reduce-scatter"):
        return float(n - 1), (n - 1) / n
    if kind == "collective-permute":
        return 1.0, 1.0
    raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")


def predict(kind: str, n: int, sizes, alpha: float, bandwidth: float) -> np.ndarray:
    """Ring-model seconds for buffers of ``sizes`` bytes."""
    a, b = coefficients(kind, n)
    return a * alpha + b * np.asarray(sizes, np.float64) / bandwidth


def _objective(rows: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((rows @ x - 1.0) ** 2))


def fit(kind: str, n: int, sizes, seconds) -> tuple[float, float]:
    """(α seconds, B bytes/s) minimising Σ ((a·α + b·S/B − t)/t)² with α ≥ 0 and 1/B ≥ 0.

    Linear least squares in (α, β = 1/B) on rows (a/t, b·S/t) against 1 (relative errors,
    so a 1 KiB point weighs as much as a 64 MiB one); where the unconstrained optimum has a
    negative coordinate, the better of the two one-variable fits on the boundary (exact
    non-negative least squares for two unknowns). B is ``inf`` when β = 0.
    """
    sizes, t = np.asarray(sizes, np.float64), np.asarray(seconds, np.float64)
    if sizes.shape != t.shape or sizes.size < 2 or np.any(t <= 0):
        raise ValueError("fit: needs at least 2 sizes with positive times, of equal length")
    a, b = coefficients(kind, n)
    rows = np.stack([a / t, b * sizes / t], axis=1)
    x = np.linalg.lstsq(rows, np.ones_like(t), rcond=None)[0]
    if np.any(x < 0):
        candidates = []
        for j in (0, 1):  # only α, or only β
            col = rows[:, j]
            y = np.zeros(2)
            y[j] = max(float(col.sum() / (col @ col)), 0.0)
            candidates.append(y)
        x = min(candidates, key=lambda y: _objective(rows, y))
    alpha, beta = float(x[0]), float(x[1])
    return alpha, (math.inf if beta == 0 else 1.0 / beta)


def relative_errors(kind: str, n: int, sizes, seconds, alpha, bandwidth) -> np.ndarray:
    """(model − measured) / measured per size."""
    t = np.asarray(seconds, np.float64)
    return (predict(kind, n, sizes, alpha, bandwidth) - t) / t


def bus_factor(kind: str, n: int) -> float:
    """nccl-tests' busbw ÷ algbw for ``kind`` over ``n`` ranks."""
    if kind == "all-reduce":
        return 2.0 * (n - 1) / n
    if kind in ("all-gather", "reduce-scatter"):
        return (n - 1) / n
    if kind == "collective-permute":
        return 1.0
    raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")


def busbw(kind: str, n: int, nbytes, seconds) -> np.ndarray:
    """nccl-tests' bus bandwidth (bytes/s): S/t × :func:`bus_factor`."""
    return bus_factor(kind, n) * np.asarray(nbytes, np.float64) / np.asarray(seconds, np.float64)


def split(sizes) -> tuple[list[int], list[int]]:
    """Indices of the sizes fitted on (even positions) and held out (odd positions)."""
    idx = list(range(len(sizes)))
    return idx[0::2], idx[1::2]


def analyse(kind: str, n: int, sizes, seconds) -> dict:
    """The fit on alternate sizes and the model's errors on all of them."""
    sizes, seconds = list(sizes), list(seconds)
    on, out = split(sizes)
    alpha, bandwidth = fit(kind, n, [sizes[i] for i in on], [seconds[i] for i in on])
    err = relative_errors(kind, n, sizes, seconds, alpha, bandwidth)
    held = np.abs(err[out]) if out else np.array([math.nan])
    return {
        "kind": kind,
        "n": n,
        "alpha_s": alpha,
        "bandwidth_Bps": bandwidth,
        "fit_sizes": [sizes[i] for i in on],
        "held_out_sizes": [sizes[i] for i in out],
        "fit_median_abs_err": float(np.median(np.abs(err[on]))),
        "held_out_median_abs_err": float(np.median(held)),
        "held_out_max_abs_err": float(np.max(held)),
        "rel_err": [float(e) for e in err],
        "busbw_Bps": [float(v) for v in busbw(kind, n, sizes, seconds)],
    }


# ----------------------------------------------------------------------------------------------
# Timing (jax)
# ----------------------------------------------------------------------------------------------


def calls_per_round(nbytes: int, quick: bool) -> int:
    """Deterministic (every process runs the same schedule): ~16 MiB moved per round, 2–20."""
    if quick:
        return 3
    return int(min(20, max(2, (16 * MiB) // nbytes)))


def collective_fn(kind: str, mesh, n: int):
    """A jitted shard_map over ``mesh``'s axis "workers" doing one ``kind`` on [1, m] blocks."""
    import jax
    from jax.sharding import PartitionSpec as P

    def body(x):
        if kind == "all-reduce":
            return jax.lax.psum(x, "workers")
        if kind == "all-gather":
            return jax.lax.all_gather(x, "workers", axis=1, tiled=True)
        if kind == "reduce-scatter":
            return jax.lax.psum_scatter(x, "workers", scatter_dimension=1, tiled=True)
        return jax.lax.ppermute(x, "workers", [(i, (i + 1) % n) for i in range(n)])

    spec = P("workers")
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))


def local_block(kind: str, n: int, nbytes: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s [1, m] float32 input: small integers, exact in any summation order."""
    m = nbytes // 4 // (n if kind == "all-gather" else 1)
    return ((rank + 1) + np.arange(m, dtype=np.int64) % 7).astype(np.float32)[None]


def expected(kind: str, n: int, nbytes: int) -> np.ndarray:
    """The [n, m'] global result of ``kind`` on the blocks of :func:`local_block` (numpy)."""
    blocks = np.concatenate([local_block(kind, n, nbytes, r) for r in range(n)])
    if kind == "all-reduce":
        return np.tile(blocks.sum(0), (n, 1))
    if kind == "all-gather":
        return np.tile(blocks.reshape(1, -1), (n, 1))
    if kind == "reduce-scatter":
        return blocks.sum(0).reshape(n, -1)
    return np.roll(blocks, 1, axis=0)  # rank i receives from i - 1


def mismatches(kind: str, n: int, nbytes: int, out, mesh) -> int:
    """Elements of this process's shards of ``out`` that differ from :func:`expected`."""
    got = np.concatenate([np.asarray(a.data) for a in out.addressable_shards])
    order = list(mesh.devices.flat)
    rows = [order.index(a.device) for a in out.addressable_shards]
    return int(np.sum(got != expected(kind, n, nbytes)[rows]))


def time_sizes(kind: str, sizes, mesh, n: int, make_input, rounds: int, quick: bool):
    """Seconds of every timed call per size, ``{size: [seconds]}`` (this process's clock), and
    the wrong elements of the two checked warm-up results, ``{size: count}`` where not 0."""
    import jax

    fn = collective_fn(kind, mesh, n)
    inputs = {s: make_input(s) for s in sizes}
    hlo = fn.lower(inputs[sizes[0]]).compile().as_text()
    assert HLO_OP[kind] in hlo, f"{kind}: no {HLO_OP[kind]} in the compiled HLO"
    wrong = {}
    for s in sizes:  # warm up (compile), check the results where cheap
        for _ in range(2):
            out = jax.block_until_ready(fn(inputs[s]))
            if s <= CHECK_UP_TO and (bad := mismatches(kind, n, s, out, mesh)):
                wrong[s] = wrong.get(s, 0) + bad
    times = {s: [] for s in sizes}
    for r in range(rounds):
        for s in sizes if r % 2 == 0 else sizes[::-1]:
            for _ in range(calls_per_round(s, quick)):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(inputs[s]))
                times[s].append(time.perf_counter() - t0)
    return times, wrong


def run_inproc(sizes, rounds: int, quick: bool, n: int = 8) -> tuple[dict, dict]:
    """Part (a) on n simulated devices of this process: ``{kind: {size: [seconds]}}`` and
    ``{kind: {size: wrong elements}}``."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.devices()[:n]
    if len(devices) < n:
        raise RuntimeError(f"inproc: needs {n} devices, found {len(devices)}")
    mesh = Mesh(np.array(devices), ("workers",))
    sharding = NamedSharding(mesh, P("workers"))
    out, wrong = {}, {}
    for kind in KINDS:
        make = lambda s, kind=kind: jax.device_put(
            np.concatenate([local_block(kind, n, s, r) for r in range(n)]), sharding
        )
        out[kind], wrong[kind] = time_sizes(kind, list(sizes), mesh, n, make, rounds, quick)
        print(f"  inproc {kind}: done", flush=True)
    return out, wrong


def gloo_worker(args) -> None:
    """One process of part (b): joins the run, times every kind, writes its times as JSON."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(args.coordinator, args.processes, args.process_id)
    n = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("workers",))
    sharding = NamedSharding(mesh, P("workers"))
    rank = jax.process_index()
    out, wrong = {}, {}
    for kind in KINDS:
        make = lambda s, kind=kind: jax.make_array_from_process_local_data(
            sharding, local_block(kind, n, s, rank)
        )
        times, bad = time_sizes(kind, list(args.sizes), mesh, n, make, args.rounds, args.quick)
        out[kind] = {str(s): v for s, v in times.items()}
        wrong[kind] = {str(s): v for s, v in bad.items()}
    with open(args.worker_out, "w", encoding="utf-8") as fh:
        json.dump({"n": n, "times": out, "wrong": wrong}, fh)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(sizes, rounds: int, quick: bool, processes: int = 2, timeout_s: float = 600) -> dict:
    """Part (b): starts ``processes`` workers; ``{kind: {size: [per-call min seconds]}}``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(
        [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_force_host_platform_device_count=1"]
    )
    coordinator = f"127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"times{i}.json") for i in range(processes)]
        procs = []
        for i in range(processes):
            cmd = [sys.executable, "-m", "experiments.bench.network", "--gloo-worker"]
            cmd += ["--coordinator", coordinator, "--processes", str(processes)]
            cmd += ["--process-id", str(i), "--worker-out", files[i], "--rounds", str(rounds)]
            cmd += ["--sizes", *map(str, sizes)] + (["--quick"] if quick else [])
            procs.append(
                subprocess.Popen(  # noqa: S603 - this module
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,  # gloo's connection reports
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout_s
        errors = []
        for i, p in enumerate(procs):
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    if q.poll() is None:
                        q.kill()
                raise RuntimeError(f"gloo: worker {i} did not finish in {timeout_s:g} s") from None
            if p.returncode != 0:
                errors.append(f"worker {i} exited with {p.returncode}: {err.strip()[-2000:]}")
        if errors:
            raise RuntimeError("gloo: " + "\n".join(errors))
        results = []
        for f in files:
            with open(f, encoding="utf-8") as fh:
                results.append(json.load(fh))
    n = results[0]["n"]
    out = {}
    for kind in KINDS:
        out[kind] = {
            s: list(np.min([r["times"][kind][str(s)] for r in results], axis=0)) for s in sizes
        }
    raw = [{k: {int(s): v for s, v in r["times"][k].items()} for k in KINDS} for r in results]
    wrong = {k: {} for k in KINDS}
    for r in results:
        for k in KINDS:
            for s, v in r["wrong"][k].items():
                wrong[k][int(s)] = wrong[k].get(int(s), 0) + v
    return {"n": n, "times": out, "per_process": raw, "wrong": wrong}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def human(nbytes: int) -> str:
    if nbytes >= MiB:
        return f"{nbytes // MiB} MiB"
    return f"{nbytes // KiB} KiB" if nbytes >= KiB else f"{nbytes} B"


def regimes(kind: str, n: int, sizes, seconds, split_at: int) -> dict:
    """The fit and held-out errors separately on sizes ≤ ``split_at`` ("small") and above it
    ("large"), each on alternate sizes of its own range; a range of under 3 sizes is left out."""
    out = {}
    for name, keep in (("small", lambda s: s <= split_at), ("large", lambda s: s > split_at)):
        idx = [i for i, s in enumerate(sizes) if keep(s)]
        if len(idx) >= 3:
            fitted = analyse(kind, n, [sizes[i] for i in idx], [seconds[i] for i in idx])
            out[name] = {k: fitted[k] for k in FASTEST_KEYS}
            out[name]["sizes"] = [sizes[idx[0]], sizes[idx[-1]]]
    return out


def summarise(
    part: str, n: int, times: dict, wrong: dict | None = None, split_at: int = SPLIT_AT
) -> list[dict]:
    """Per kind: the medians, the fit and its errors (:func:`analyse`); the same fit on each
    size's fastest call; the fit per size regime (:func:`regimes`)."""
    rows = []
    for kind in KINDS:
        sizes = sorted(times[kind])
        medians = [statistics.median(times[kind][s]) for s in sizes]
        row = {"part": part, **analyse(kind, n, sizes, medians)}
        row["sizes"], row["median_s"] = sizes, medians
        row["calls"] = [len(times[kind][s]) for s in sizes]
        row["min_s"] = [min(times[kind][s]) for s in sizes]
        fastest = analyse(kind, n, sizes, row["min_s"])
        row["fastest"] = {k: fastest[k] for k in FASTEST_KEYS}
        row["regimes"] = regimes(kind, n, sizes, medians, split_at)
        row["wrong_results"] = dict((wrong or {}).get(kind, {}))
        rows.append(row)
    return rows


def regime_table(rows: list[dict]) -> list[str]:
    lines = [
        "| part | collective | sizes | α (µs) | B (GB/s) | held-out abs err, median / max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        for g in r["regimes"].values():
            lines.append(
                f"| {r['part']} | {r['kind']} | {human(g['sizes'][0])}–{human(g['sizes'][1])} "
                f"| {g['alpha_s'] * 1e6:.1f} | {g['bandwidth_Bps'] / 1e9:.3f} "
                f"| {g['held_out_median_abs_err']:.0%} / {g['held_out_max_abs_err']:.0%} |"
            )
    return lines


def summary_table(rows: list[dict]) -> list[str]:
    """Per part and kind: the fit on medians (α, B, held-out |error| median / max, the fit
    set's median |error|), the largest size's busbw, and the same fit on each size's fastest
    call."""
    lines = [
        "| part | collective | n | α (µs) | B (GB/s) | held-out abs err, median / max "
        "| fit-set median abs err | busbw, largest size (GB/s) | fastest calls: α (µs), "
        "B (GB/s), held-out median / max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = r["fastest"]
        lines.append(
            f"| {r['part']} | {r['kind']} | {r['n']} | {r['alpha_s'] * 1e6:.1f} "
            f"| {r['bandwidth_Bps'] / 1e9:.3f} | {r['held_out_median_abs_err']:.0%} / "
            f"{r['held_out_max_abs_err']:.0%} | {r['fit_median_abs_err']:.0%} "
            f"| {r['busbw_Bps'][-1] / 1e9:.3f} | {f['alpha_s'] * 1e6:.1f}, "
            f"{f['bandwidth_Bps'] / 1e9:.3f}, {f['held_out_median_abs_err']:.0%} / "
            f"{f['held_out_max_abs_err']:.0%} |"
        )
    return lines


def size_table(rows: list[dict]) -> list[str]:
    """One part's rows: per size and kind, median µs, busbw GB/s and the model's error
    (``*``: a size the fit used)."""
    head = "| size |" + "".join(f" {r['kind']} µs | busbw GB/s | model err |" for r in rows)
    lines = [head, "|---:|" + "---:|---:|---:|" * len(rows)]
    for i, s in enumerate(rows[0]["sizes"]):
        cells = [human(s) + (" *" if s in rows[0]["fit_sizes"] else "")]
        for r in rows:
            cells += [
                f"{r['median_s'][i] * 1e6:,.0f}",
                f"{r['busbw_Bps'][i] / 1e9:.3f}",
                f"{r['rel_err'][i]:+.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(rows: list[dict], header: dict) -> str:
    lines = [
        f"# Collectives on this machine ({header['date']})",
        "",
        f"`{header['command']}` — before: {header['load_before']}; after: "
        f"{header['load_after']}; {header['elapsed_s']:.0f} s.",
        "",
        "α–β fit per collective (ring formulas; fitted on every other size, errors on the rest):",
        "",
        *summary_table(rows),
    ]
    if any(r["regimes"] for r in rows):
        lines += [
            "",
            "The same fit on each size regime alone (buffers up to and above "
            f"{human(header['split_at'])}; alternate sizes of each range):",
            "",
            *regime_table(rows),
        ]
    for part in dict.fromkeys(r["part"] for r in rows):
        part_rows = [r for r in rows if r["part"] == part]
        lines += [
            "",
            f"**{part}, n = {part_rows[0]['n']}** (median of calls; model err = "
            "(model − measured)/measured; `*` = a size the fit used)",
            "",
            *size_table(part_rows),
        ]
        for r in part_rows:
            if r["wrong_results"]:
                bad = ", ".join(f"{human(s)}: {c}" for s, c in sorted(r["wrong_results"].items()))
                lines += ["", f"**Wrong results** ({part}, {r['kind']}; elements): {bad}"]
    return "\n".join(lines) + "\n"


def write(out_dir: str, rows: list[dict], header: dict, text: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "network.json"), "w", encoding="utf-8") as fh:
        json.dump({**header, "results": rows}, fh, indent=1)
    with open(os.path.join(out_dir, "network.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["part", "kind", "n", "bytes", "median_s", "min_s", "calls", "fit_or_held_out"]
            + ["model_s"]
            + ["rel_err", "algbw_Bps", "busbw_Bps", "alpha_s", "bandwidth_Bps"]
        )
        for r in rows:
            model = predict(r["kind"], r["n"], r["sizes"], r["alpha_s"], r["bandwidth_Bps"])
            for i, s in enumerate(r["sizes"]):
                w.writerow(
                    [r["part"], r["kind"], r["n"], s, f"{r['median_s'][i]:.9g}"]
                    + [f"{r['min_s'][i]:.9g}", r["calls"][i]]
                    + ["fit" if s in r["fit_sizes"] else "held_out", f"{model[i]:.9g}"]
                    + [f"{r['rel_err'][i]:.6g}", f"{s / r['median_s'][i]:.6g}"]
                    + [f"{r['busbw_Bps'][i]:.6g}", f"{r['alpha_s']:.6g}"]
                    + [f"{r['bandwidth_Bps']:.6g}"]
                )
    with open(os.path.join(out_dir, "network.md"), "w", encoding="utf-8") as fh:
        fh.write(text)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1-64 KiB, one round: seconds")
    parser.add_argument("--parts", nargs="+", choices=("inproc", "gloo"), default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="buffer bytes")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 1)")
    parser.add_argument("--out", default=None, help=f"results folder (default {RESULTS})")
    # a gloo worker (started by run_gloo)
    parser.add_argument("--gloo-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.parts = args.parts or ["inproc", "gloo"]
    if args.out is None and not args.quick:
        args.out = RESULTS
    bad = [s for s in args.sizes if s < 32 * 8 or s % 32]
    if bad:
        parser.error(f"--sizes: must be multiples of 32 bytes, at least 256, got {bad}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.gloo_worker:
        gloo_worker(args)
        return {}
    simulate_cpu_devices(8)
    started, load_before = time.perf_counter(), load_line()
    print(f"{load_before}; sizes {human(args.sizes[0])}..{human(args.sizes[-1])}", flush=True)
    rows = []
    if "inproc" in args.parts:
        rows += summarise("in-process", 8, *run_inproc(args.sizes, args.rounds, args.quick))
    if "gloo" in args.parts:
        gloo = run_gloo(args.sizes, args.rounds, args.quick)
        rows += summarise("gloo, 2 processes", gloo["n"], gloo["times"], gloo["wrong"])
        print("  gloo: done", flush=True)
    header = {
        "command": " ".join(
            ["python -m experiments.bench.network", *map(shlex.quote, argv or sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "load_before": load_before,
        "load_after": load_line(),
        "elapsed_s": time.perf_counter() - started,
        "split_at": SPLIT_AT,
    }
    text = report(rows, header)
    print(text)
    if args.out:
        write(args.out, rows, header, text)
        print(f"wrote {args.out}/network.{{json,csv,md}}")
    return {"rows": rows, "header": header}


if __name__ == "__main__":
    main()
