"""``faults=byzantine faults.attack=label_flip`` through the runner: the listed workers train on
labels ``C - 1 - y``, every other worker on its own labels (jdo.train.builder.poison)."""

import numpy as np

from jdo import faults
from jdo.train import build, run
from jdo.train.builder import poison

LABEL_FLIP = ("faults=byzantine", "faults.attack=label_flip", "faults.workers=[1,3]")


def test_only_the_byzantine_workers_labels_are_flipped(make_cfg):
    exp = build(make_cfg("workers=4", "partition=dirichlet"))
    clean = exp.data
    flipped = build(make_cfg("workers=4", "partition=dirichlet", *LABEL_FLIP)).data
    np.testing.assert_array_equal(flipped.x, clean.x)
    np.testing.assert_array_equal(flipped.count, clean.count)
    for w in range(4):
        valid = slice(0, clean.count[w])
        expected = 9 - clean.y[w] if w in (1, 3) else clean.y[w]  # digits: C = 10
        np.testing.assert_array_equal(flipped.y[w][valid], expected[valid])
    assert flipped.y.dtype == clean.y.dtype
    # another attack, or no Byzantine fault, leaves the data alone
    assert poison(clean, exp.dataset, faults.byzantine([1, 3], "alie")) is clean
    assert poison(clean, exp.dataset, faults.link_drop(0.1)) is clean


def test_binary_labels_flip_to_one_minus_y(make_cfg):
    clean = build(make_cfg("workers=4", "task=logistic")).data
    flipped = build(make_cfg("workers=4", "task=logistic", *LABEL_FLIP)).data
    np.testing.assert_array_equal(flipped.y[[1, 3]], 1 - clean.y[[1, 3]])
    np.testing.assert_array_equal(flipped.y[[0, 2]], clean.y[[0, 2]])


def test_a_byzantine_majority_with_flipped_labels_teaches_the_flipped_classes(make_cfg, tmp_path):
    """3 of 4 workers flip their labels and the mean aggregates: the averaged model learns
    y -> 9 - y, so its test accuracy falls far below chance (measured: 0.036; the same run
    without the attack: 0.90, with worker 0 alone flipped: 0.88)."""
    summary = run(
        make_cfg(
            "workers=4",
            "faults=byzantine",
            "faults.attack=label_flip",
            "faults.workers=[0,1,2]",
            "trainer.steps=50",
            "trainer.log_every=25",
            "trainer.eval_every=50",
            "trainer.progress=false",
            "checkpoint=none",
        ),
        output_dir=str(tmp_path),
    )
    assert np.isfinite(summary["train/loss"])
    assert summary["eval/avg_model/accuracy"] < 0.2, summary["eval/avg_model/accuracy"]
