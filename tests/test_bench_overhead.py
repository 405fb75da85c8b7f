"""Smoke tests of experiments/bench/overhead.py: one round of each part runs, reports finite
ratios, and refuses a hand-written chunk that does not do the runner's work."""

import math

import pytest

from experiments.bench import overhead

pytestmark = pytest.mark.slow  # compiles the runner's chunk and two hand-written ones


def test_chunk_part_runs_and_checks_the_same_work(tmp_path):
    out = tmp_path / "overhead.md"
    rows = overhead.main(
        [
            "--rounds",
            "1",
            "--calls",
            "1",
            "--parts",
            "chunk",
            "--liftings",
            "vmap",
            "--out",
            str(out),
        ]
    )["chunk"]
    assert [r["variant"] for r in rows] == ["hand_again", "jdo"]
    for r in rows:
        assert r["lifting"] == "vmap"
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["loss_diff"] <= 1e-4
    text = out.read_text()
    assert "## Chunk of K=50 steps" in text and "| vmap | jdo |" in text


def test_chunk_part_refuses_different_work(tmp_path, monkeypatch):
    mlp = overhead.hand_mlp
    monkeypatch.setattr(overhead, "hand_mlp", lambda params, x: 1.01 * mlp(params, x))
    with pytest.raises(AssertionError, match="not the same work"):
        overhead.main(
            [
                "--rounds",
                "1",
                "--calls",
                "1",
                "--parts",
                "chunk",
                "--liftings",
                "vmap",
                "--out",
                str(tmp_path / "o.md"),
            ]
        )


def test_whole_run_part_runs(tmp_path):
    out = tmp_path / "overhead.md"
    rows = overhead.main(
        ["--run-rounds", "1", "--steps", "50", "--parts", "run", "--out", str(out)]
    )["run"]
    names = [r["variant"] for r in rows]
    assert names == ["hand", "hand_again", "jdo, checkpoint=none", "jdo, default checkpointing"]
    for r in rows:
        assert r["wall_s"] > r["train_s"] > 0 and math.isfinite(r["ratio"])
    assert "## Whole run, 50 steps" in out.read_text()
