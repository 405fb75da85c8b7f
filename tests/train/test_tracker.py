"""JsonlTracker on resume: later steps are dropped (recomputed), damaged lines kept aside."""

import json
import logging
import sys
import time

import pytest
from omegaconf import OmegaConf

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


# ----------------------------------------------------------------------------------------------
# The trackers chosen with logger=[...]: each writes what it should, resumes as documented
# ----------------------------------------------------------------------------------------------

CONFIG = {"optimizer": {"learning_rate": 0.1, "_target_": "optax.sgd"}, "workers": 4}
POINTS = {10: {"train/loss": 2.0, "eval/avg_model/accuracy": 0.5}, 20: {"train/loss": 1.5}}


def _log_all(tracker, points):
    for step, metrics in points.items():
        tracker.log(step, metrics)
    tracker.close()


def test_mlflow_tracker_writes_a_file_store_that_mlflow_reads_back(tmp_path):
    from mlflow.tracking import MlflowClient

    from jdo.train.tracker import MLflowTracker

    _log_all(MLflowTracker(str(tmp_path), 0, CONFIG), POINTS)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "jdo"
    assert run.data.params == {
        "optimizer.learning_rate": "0.1",
        "optimizer._target_": "optax.sgd",
        "workers": "4",
    }
    loss = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == [(10, 2.0), (20, 1.5)]
    accuracy = client.get_metric_history(run_id, "eval/avg_model/accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(10, 0.5)]

    # resumed from a checkpoint at step 10: the same MLflow run; from step 0: a new one
    _log_all(MLflowTracker(str(tmp_path), 10, CONFIG), {20: {"train/loss": 1.5}})
    assert (tmp_path / "mlflow_run_id").read_text().strip() == run_id
    loss = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in loss) == [(10, 2.0), (20, 1.5), (20, 1.5)]
    MLflowTracker(str(tmp_path), 0, CONFIG).close()
    assert (tmp_path / "mlflow_run_id").read_text().strip() != run_id


def _wandb_records(run_dir):
    """The records of a W&B offline run file (a LevelDB-style log: 7-byte file header, then
    records of crc32 (4), length (2, little-endian), type (1: full, 2/3/4: first/middle/last)
    in 32 KiB blocks), parsed with W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, block = path.read_bytes(), 32768
    pos, chunks, records = 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def _wandb_history(run_dir, wait_s=30.0):
    """{step: metrics} and the config of a W&B offline run, once its file is complete (W&B's
    service process may still be writing it when ``finish()`` returns)."""
    deadline = time.monotonic() + wait_s
    while not any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(run_dir)):
        assert time.monotonic() < deadline, f"{run_dir}: no exit record after {wait_s} s"
        time.sleep(0.1)
    history, config = {}, {}

    def items(updates):
        return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}

    for record in _wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            metrics = items(record.history.item)
            step = metrics.pop("_step", record.history.step.num)
            history[step] = {k: v for k, v in metrics.items() if not k.startswith("_")}
        elif kind in ("run", "config"):
            config.update(items(getattr(record, kind).config.update))
    return history, config


def test_wandb_tracker_writes_an_offline_run_with_the_history_and_config(tmp_path):
    from jdo.train.tracker import WandbTracker

    _log_all(WandbTracker(str(tmp_path), 0, CONFIG), POINTS)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    history, config = _wandb_history(run_dir)
    assert history == POINTS
    assert config["optimizer"] == CONFIG["optimizer"] and config["workers"] == 4

    _log_all(WandbTracker(str(tmp_path), 10, CONFIG), {20: {"train/loss": 1.5}})  # resumed
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def _tensorboard_events(logdir):
    """(tag, step, value) of every scalar, and the plugin names of the other summaries, from
    TensorBoard event files (TFRecords: length (8), crc (4), data, crc (4))."""
    from tensorboardX.proto import event_pb2

    scalars, plugins = [], set()
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            length = int.from_bytes(data[pos : pos + 8], "little")
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.append((value.tag, event.step, value.simple_value))
                else:
                    plugins.add(value.metadata.plugin_data.plugin_name)
    return scalars, plugins


def test_tensorboard_tracker_writes_scalars_hparams_and_the_config(tmp_path):
    from jdo.train.tracker import TensorBoardTracker

    _log_all(TensorBoardTracker(str(tmp_path), 0, CONFIG), POINTS)
    scalars, plugins = _tensorboard_events(tmp_path)
    assert sorted(scalars) == sorted(
        (tag, step, value) for step, m in POINTS.items() for tag, value in m.items()
    )
    assert {"hparams", "text"} <= plugins


def test_runner_writes_every_chosen_tracker(make_cfg, tmp_path):
    """logger=[tensorboard,mlflow,wandb] through the runner: each tracker gets the metrics
    jsonl gets, and the resolved config."""
    from mlflow.tracking import MlflowClient

    from jdo.train import run

    trackers = "logger=[tensorboard,mlflow,wandb]"
    cfg = make_cfg("debug=smoke", "task=least_squares", "workers=2", "checkpoint=none", trackers)
    run(cfg, output_dir=str(tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps, losses = [r["step"] for r in lines], [r["train/loss"] for r in lines]
    assert steps == [1, 2, 3]

    def check(points):  # (step, value) pairs of train/loss
        assert [s for s, _ in points] == steps
        assert [v for _, v in points] == pytest.approx(losses, rel=1e-6)  # TensorBoard: float32

    scalars, _ = _tensorboard_events(tmp_path / "tb")
    check([(s, v) for tag, s, v in scalars if tag == "train/loss"])
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    check([(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")])
    assert client.get_run(run_id).data.params["workers"] == "2"
    wandb_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{wandb_id}")
    history, config = _wandb_history(run_dir)
    check([(s, m["train/loss"]) for s, m in sorted(history.items())])
    assert config["workers"] == 2


@pytest.mark.parametrize(
    ("logger", "key", "message"),
    [
        (
            {"mlflow": {}},
            "logger",
            "logger=mlflow needs mlflow-skinny (import mlflow): pip install 'jdo[mlflow]'",
        ),
        (
            {"wandb": {}},
            "logger",
            "logger=wandb needs wandb (import wandb): pip install 'jdo[wandb]'",
        ),
        (
            {"tensorboard": True},
            "logger.tensorboard",
            "trackers are chosen as a list now: logger=[tensorboard] (not logger.tensorboard=true)",
        ),
        (
            {"comet": {}},
            "logger.comet",
            "unknown tracker; allowed: jsonl, tensorboard, mlflow, "
            "wandb (chosen as a list: logger=[tensorboard,mlflow])",
        ),
        (
            {"mlflow": {"uri": "x"}},
            "logger.mlflow.uri",
            "unknown key; allowed keys: tracking_uri, experiment, run_name",
        ),
    ],
)
def test_a_bad_logger_is_one_config_error(monkeypatch, make_cfg, logger, key, message):
    from jdo.train import ConfigError, validate

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails: not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = OmegaConf.to_container(make_cfg(), resolve=True)
    cfg["logger"] = logger
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert (e.value.key, str(e.value)) == (key, f"{key}: {message}")


def test_a_tracker_whose_package_is_missing_names_the_extra(monkeypatch, tmp_path):
    from jdo.train.tracker import MLflowTracker, WandbTracker

    for name, tracker in (("mlflow", MLflowTracker), ("wandb", WandbTracker)):
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            monkeypatch.setitem(sys.modules, module, None)  # import fails, even if imported
        monkeypatch.setitem(sys.modules, name, None)
        with pytest.raises(ImportError, match=rf"pip install 'jdo\[{name}\]'$"):
            tracker(str(tmp_path))
