"""JsonlTracker on resume: later steps are dropped (recomputed), damaged lines kept aside."""

import json
import logging

from jdo.train.tracker import JsonlTracker


def _write(path, lines):
    path.write_text("".join(lines))


def _line(step, loss=1.0):
    return json.dumps({"step": step, "train/loss": loss}) + "\n"


def test_resume_keeps_earlier_steps_and_drops_later_ones(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write(path, [_line(10), _line(20), _line(30), _line(40)])
    with caplog.at_level(logging.INFO, logger="jdo"):
        JsonlTracker(str(path), resume_step=20).close()
    assert path.read_text() == _line(10) + _line(20)
    assert not (tmp_path / "metrics.jsonl.damaged").exists()
    assert "dropped 2 lines of steps after 20" in caplog.text


def test_damaged_lines_are_moved_aside_with_a_warning_not_dropped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    torn = '{"step": 30, "train/lo'  # a kill in the middle of a write: no newline
    middle = "garbage that is not json\n"
    no_step = '{"train/loss": 2.0}\n'
    _write(path, [_line(10), middle, _line(20), no_step, _line(30), torn])
    with caplog.at_level(logging.WARNING, logger="jdo"):
        tracker = JsonlTracker(str(path), resume_step=20)
    tracker.log(30, {"train/loss": 0.5})
    tracker.close()
    assert path.read_text() == _line(10) + _line(20) + _line(30, 0.5)
    damaged = (tmp_path / "metrics.jsonl.damaged").read_text()
    assert damaged == middle + no_step + torn + "\n"
    assert f"{path}: 3 damaged lines" in caplog.text
    assert f"{path}.damaged" in caplog.text


def test_damaged_lines_accumulate_over_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [_line(10), "{bad\n"])
    JsonlTracker(str(path), resume_step=10).close()
    with open(path, "a") as f:
        f.write("{worse\n")
    JsonlTracker(str(path), resume_step=10).close()
    assert (tmp_path / "metrics.jsonl.damaged").read_text() == "{bad\n{worse\n"
    assert path.read_text() == _line(10)


def test_an_intact_file_is_left_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [_line(10), _line(20)])
    before = path.stat().st_mtime_ns
    JsonlTracker(str(path), resume_step=20).close()
    assert path.stat().st_mtime_ns == before
    assert path.read_text() == _line(10) + _line(20)
