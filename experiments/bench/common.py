"""Timing helpers for benchmarks: interleaved rounds, minimum of per-round minima, A/A control.

The machine is shared and noisy, so benchmarks never compare numbers from different runs: every
variant is timed in the same rounds, one call each in turn, and reported as a ratio to the
baseline. An A/A row (the baseline against a second copy of itself) shows the noise floor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def simulate_cpu_devices(count: int = 8) -> None:
    """Must run before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def run_config(overrides) -> tuple[dict, list[dict]]:
    """What ``python -m experiments.train <overrides>`` does, in this process: the summary and
    the ``metrics.jsonl`` lines of one ``jdo.train.run`` of the composed config (its run
    directory is temporary)."""
    import json
    import tempfile

    from hydra import compose, initialize_config_module

    from jdo.train import run

    with initialize_config_module("jdo.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with tempfile.TemporaryDirectory() as out:
        summary = run(cfg, output_dir=out)
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            return summary, [json.loads(line) for line in f]


def interleaved_min(
    fns: dict[str, Callable[[], object]], rounds: int = 20, calls: int = 10, block=None
) -> dict[str, float]:
    """Seconds per call for each fn: min over rounds of the min over ``calls`` calls.

    Each call is waited on (``block``), so no queue of dispatched collectives builds up (the CPU
    collective deadlock in PITFALLS) and the time is the call's own.
    """
    import jax

    block = block or jax.block_until_ready
    for fn in fns.values():  # warm up: compile and first run
        block(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                block(fn())
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    rounds: int = 10,
    calls: int = 10,
    block=None,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[list[float]]]:
    """Seconds of every call of each fn, by round: ``{name: [[call seconds] per round]}``.

    In each round every fn runs ``calls`` times in a row, the fns one after the other, in
    forward order on even rounds and reversed on odd ones (so no fn always runs right after
    the same neighbour). Each call is waited on (``block``; default
    ``jax.block_until_ready`` of its result). ``clock``: wall time by default;
    ``time.process_time`` counts this process's CPU seconds (all threads).
    """
    if block is None:
        import jax

        block = jax.block_until_ready
    if warmup:
        for fn in fns.values():
            block(fn())
    times: dict[str, list[list[float]]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds = []
            for _ in range(calls):
                t0 = clock()
                block(fns[name]())
                seconds.append(clock() - t0)
            times[name].append(seconds)
    return times


def min_of_medians(times: list[list[float]]) -> float:
    """The minimum over rounds of the per-round medians: the median drops a call that a burst
    of load hit, the minimum over rounds the rounds a long one hit."""
    import statistics

    return min(statistics.median(r) for r in times)


def min_of_mins(times: list[list[float]]) -> float:
    """The fastest call of all rounds: on a heavily loaded machine the least disturbed one."""
    return min(min(r) for r in times)


def load_line() -> str:
    """The machine's CPU count and 1/5/15-minute load averages, for a result's header."""
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.1f} / {five:.1f} / {fifteen:.1f}"
