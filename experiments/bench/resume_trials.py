"""Kill/resume trials: how often does a run killed with SIGKILL and resumed end bit-identical?

    python -m experiments.bench.resume_trials [--trials 10] [--seed 0]

One uninterrupted reference run, then ``--trials`` runs into fresh directories, each killed
(SIGKILL, by jdo's fault injection) at 1 to 3 random steps — between checkpoints or during an
asynchronous save — and resumed until it finishes. A trial passes when its final checkpoint's
content digest and every logged metric equal the reference's. Writes
experiments/bench/results/resume_trials_seed<seed>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent.parent
RESULTS = Path(__file__).parent / "results"
BASE = (
    "model.hidden=[32]",
    "trainer.steps=200",
    "trainer.log_every=10",
    "trainer.eval_every=50",
    "trainer.progress=false",
    "checkpoint.keep_last=10",
    "checkpoint.every=50",
)
DETERMINISTIC = ("train/", "eval/", "consensus", "bytes/")


def _train(run_dir, fault: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JDO_TEST_FAULT")}
    if fault:
        env["JDO_TEST_FAULT"] = fault  # jdo.train.loop.Faults.from_env
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *BASE, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    ).returncode


def _outcome(run_dir):
    from jdo.train.checkpoint import Checkpointer

    with Checkpointer(str(Path(run_dir) / "checkpoints")) as ckpt:
        digest = ckpt.read_meta(ckpt.steps()[-1])["digest"]
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    metrics = [
        {k: v for k, v in json.loads(line).items() if k == "step" or k.startswith(DETERMINISTIC)}
        for line in lines
    ]
    return digest, metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="jdo-resume-"))
    assert _train(work / "reference") == 0
    reference = _outcome(work / "reference")
    rows, passed = [], 0
    for trial in range(args.trials):
        run_dir = work / f"trial{trial}"
        steps = np.arange(10, 200, 10)
        weights = np.where(steps % 50 == 0, 5.0, 1.0)  # checkpoint steps (50, 100, 150) often
        kills = sorted(
            rng.choice(steps, size=rng.integers(1, 4), replace=False, p=weights / weights.sum())
        )
        # a kill during an asynchronous save can only happen at a checkpoint step
        in_save = [bool(k % 50 == 0 and rng.random() < 0.7) for k in kills]
        codes = [
            _train(run_dir, f"{k}:in_save" if s else f"{k}")
            for k, s in zip(kills, in_save, strict=True)
        ]
        final = _train(run_dir)
        ok = final == 0 and all(c == -9 for c in codes) and _outcome(run_dir) == reference
        passed += ok
        marks = [f"{k}{' (in save)' if s else ''}" for k, s in zip(kills, in_save, strict=True)]
        where = ", ".join(marks)
        rows.append(f"| {trial} | {where} | {'pass' if ok else 'FAIL'} |")
        print(rows[-1], flush=True)
    text = (
        "\n".join(
            [
                f"# Kill/resume trials: {passed} of {args.trials} bit-identical",
                "",
                "| trial | SIGKILL at steps | result |",
                "| ---: | --- | --- |",
                *rows,
                "",
                "`python -m experiments.bench.resume_trials "
                f"--trials {args.trials} --seed {args.seed}`: digits MLP, 8 workers, 200 steps, "
                "checkpoints every 50; a trial passes when the final state's digest and every "
                "logged metric equal the uninterrupted run's.",
            ]
        )
        + "\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"resume_trials_seed{args.seed}.md").write_text(text)


if __name__ == "__main__":
    main()
