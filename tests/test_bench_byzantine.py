"""experiments/bench/byzantine.py without training: the grid's runs and what the report makes of
recorded accuracies (worst case over attacks, the f-free clean run, the heat map)."""

import json

from experiments.bench import byzantine


def test_the_grid_names_each_run_once_with_its_attackers_and_rule():
    runs = dict(byzantine.cells(["digits"], [1, 3]))
    # 2 data x 2 f x 7 rules x 4 attacks, clean: 4 f-free rules once, 3 rules per f
    assert len(runs) == 2 * 2 * 7 * 4 + 2 * (4 + 3 * 2)
    flip = runs[("digits", "dirichlet 0.3", 3, "krum", "label_flip")]
    assert {"faults=byzantine", "faults.workers=[0,1,2]", "aggregator.f=3"} <= set(flip)
    assert "faults.attack=label_flip" in flip and "partition.alpha=0.3" in flip
    assert not any(o.startswith("faults") for o in runs[("digits", "iid", 0, "mean", "none")])


def test_report_takes_the_worst_attack_and_draws_the_heat_map(tmp_path):
    lines = []
    for i, name in enumerate(byzantine.AGGREGATORS):
        lines.append({"key": ["digits", "iid", 0, name, "none"], "accuracy": 0.9})
        for j, attack in enumerate(byzantine.ATTACKS):
            acc = 0.5 + 0.01 * i + 0.1 * j
            lines.append({"key": ["digits", "iid", 2, name, attack], "accuracy": acc})
            if attack != "label_flip":  # f = 3 unfinished: no worst case yet
                lines.append({"key": ["digits", "iid", 3, name, attack], "accuracy": 0.1})
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in lines))
    byzantine.report(str(raw), str(tmp_path))
    text = (tmp_path / "byzantine.md").read_text()
    # krum is i = 3, sign_flip j = 0
    assert "| digits | iid | krum | 0.900 | **0.530** | – |" in text
    assert "| digits | iid | mean | 0.900 | 0.500 | 0.600 | 0.700 | 0.800 |" in text
    for png in ("byzantine_f2.png", "byzantine_worst_case.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
