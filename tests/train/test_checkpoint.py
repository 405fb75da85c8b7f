"""The content digest and the Checkpointer: atomic orbax saves plus integrity on restore."""

import logging
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jdo.train.checkpoint import Checkpointer, CorruptCheckpoint, tree_digest


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(8, 5, 3)), jnp.float32),
        "b16": jnp.asarray(rng.normal(size=(8, 7)), jnp.bfloat16),
        "count": jnp.arange(8, dtype=jnp.int32),
        "flag": jnp.asarray(rng.random(8) > 0.5),
        "key": jax.random.split(jax.random.key(seed), 8),
        "i8": jnp.asarray(rng.integers(-100, 100, size=(8, 3)), jnp.int8),
    }


def test_digest_detects_every_single_bit_flip():
    state = _state()
    ref = tree_digest(state)
    assert ref == tree_digest(jax.tree.map(lambda x: x, state))  # deterministic
    for name in ("w", "b16", "count", "i8"):
        x = np.asarray(state[name])
        raw = x.view(np.uint8).reshape(-1)
        for pos in range(0, raw.size, max(1, raw.size // 17)):
            for bit in (0, 7):
                flipped = raw.copy()
                flipped[pos] ^= np.uint8(1 << bit)
                changed = {**state, name: jnp.asarray(flipped.view(x.dtype).reshape(x.shape))}
                assert tree_digest(changed) != ref, (name, pos, bit)
    # keys and booleans too
    other_key = {**state, "key": state["key"].at[3].set(jax.random.key(99))}
    assert tree_digest(other_key) != ref
    assert tree_digest({**state, "flag": ~state["flag"]}) != ref
    # structure, shape and dtype are part of the digest
    assert tree_digest({**state, "count": state["count"].astype(jnp.uint32)}) != ref
    assert tree_digest({**state, "w": state["w"].reshape(8, 3, 5)}) != ref


def test_digest_does_not_depend_on_sharding(mesh8):
    state = _state()
    sharded = jax.device_put(state, NamedSharding(mesh8, P("workers")))
    assert tree_digest(sharded) == tree_digest(state)


def _save(directory, steps, **kwargs):
    with Checkpointer(str(directory), keep_last=10, **kwargs) as ckpt:
        for step in steps:
            ckpt.save(step, _state(step), {"note": f"s{step}"})


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_newest(tmp_path, async_save):
    _save(tmp_path, [10, 20], async_save=async_save)
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.steps() == [10, 20]
        step, state, meta = ckpt.restore_latest(jax.tree.map(_abstract, _state()))
    assert step == 20 and meta["note"] == "s20" and meta["step"] == 20
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(20)), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _abstract(x):
    return jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
    )


def _largest_file(folder, data: bool = True):
    """The largest file of array data (orbax's merged OCDBT store ``state/d/``; the
    ``ocdbt.process_*`` copies are not read on restore) or of array metadata."""
    store = os.path.join(folder, "state", "d" if data else "array_metadatas")
    files = [os.path.join(store, f) for f in os.listdir(store)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("data", [True, False], ids=["data", "metadata"])
def test_flipped_byte_in_newest_is_named_and_previous_used(tmp_path, data):
    _save(tmp_path, [10, 20])
    victim = _largest_file(tmp_path / "20", data)
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    reports = []
    with Checkpointer(str(tmp_path)) as ckpt:
        step, state, _ = ckpt.restore_latest(
            jax.tree.map(_abstract, _state()), on_corrupt=reports.append
        )
        assert ckpt.steps() == [10]
    assert step == 10
    assert len(reports) == 1 and str(tmp_path / "20") in reports[0]
    assert os.path.isdir(tmp_path / "20.corrupt")  # moved aside, not deleted
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(10)["w"]))


def test_restore_step_raises_on_missing_file(tmp_path):
    _save(tmp_path, [10])
    os.remove(_largest_file(tmp_path / "10"))  # array data
    with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(CorruptCheckpoint, match="10"):
        ckpt.restore_step(10, jax.tree.map(_abstract, _state()))


def test_no_checkpoint_gives_none(tmp_path):
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.restore_latest(jax.tree.map(_abstract, _state())) is None


def test_digest_ignores_container_types_so_a_raw_read_verifies(tmp_path):
    from typing import NamedTuple

    class State(NamedTuple):
        params: dict
        opt: tuple

    state = State(_state(1), ({"mu": jnp.arange(8.0)},))
    _save_one = Checkpointer(str(tmp_path))
    _save_one.save(5, state, {})
    _save_one.close()
    with Checkpointer(str(tmp_path)) as ckpt:
        raw = ckpt.read_state(5)  # dicts and lists, not the NamedTuple
        assert not isinstance(raw, State)
        assert tree_digest(raw) == ckpt.read_meta(5)["digest"] == tree_digest(state)


def test_a_different_kind_of_state_is_refused_and_nothing_moved(tmp_path):
    from jdo.train.checkpoint import IncompatibleCheckpoint

    _save(tmp_path, [10, 20])
    other = {k: v for k, v in _state().items() if k != "flag"}
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(IncompatibleCheckpoint, match="20 holds a different state"):
            ckpt.restore_latest(jax.tree.map(_abstract, other))
        assert ckpt.steps() == [10, 20]
    assert not any(p.name.endswith(".corrupt") for p in tmp_path.iterdir())


def test_state_swapped_in_from_another_checkpoint_fails_the_digest(tmp_path):
    """A consistent store with other content (no file-level checksum can see it)."""
    _save(tmp_path, [10, 20])
    shutil.rmtree(tmp_path / "20" / "state")
    shutil.copytree(tmp_path / "10" / "state", tmp_path / "20" / "state")
    reports = []
    with Checkpointer(str(tmp_path)) as ckpt:
        step, _, _ = ckpt.restore_latest(
            jax.tree.map(_abstract, _state()), on_corrupt=reports.append
        )
    assert step == 10
    assert len(reports) == 1 and f"{tmp_path / '20'}: content digest mismatch" in reports[0]


def test_the_same_step_corrupt_twice_is_moved_aside_twice(tmp_path):
    for _ in range(2):
        _save(tmp_path, [20])  # (re)written after the previous copy was moved aside
        victim = _largest_file(tmp_path / "20")
        data = bytearray(open(victim, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(victim, "wb").write(bytes(data))
        with Checkpointer(str(tmp_path)) as ckpt:
            assert (
                ckpt.restore_latest(jax.tree.map(_abstract, _state()), on_corrupt=lambda m: None)
                is None
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20.corrupt", "20.corrupt-2"]


def test_a_step_folder_renamed_to_another_step_is_refused(tmp_path):
    _save(tmp_path, [10])
    os.rename(tmp_path / "10", tmp_path / "30")  # would resume at the wrong data position
    reports = []
    with Checkpointer(str(tmp_path)) as ckpt:
        assert (
            ckpt.restore_latest(jax.tree.map(_abstract, _state()), on_corrupt=reports.append)
            is None
        )
    assert "30: its metadata was altered or belongs to step 10" in reports[0]


def test_an_error_that_is_not_damage_propagates_and_moves_nothing(tmp_path, monkeypatch):
    _save(tmp_path, [10])
    with Checkpointer(str(tmp_path)) as ckpt:
        original = ckpt._manager.restore

        def restore(step, args):
            if "state" in args:
                raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while allocating")
            return original(step, args=args)

        monkeypatch.setattr(ckpt._manager, "restore", restore)
        with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
            ckpt.restore_latest(jax.tree.map(_abstract, _state()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10"]


def test_a_truncated_array_is_reported_on_one_readable_line(tmp_path):
    big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(512, 1024)), jnp.float32)}
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(10, big, {})
        ckpt.save(20, {"w": big["w"] + 1}, {})
    files = [p for p in (tmp_path / "20" / "state").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)  # the array's chunk
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    reports = []
    with Checkpointer(str(tmp_path)) as ckpt:
        step, _, _ = ckpt.restore_latest(jax.tree.map(_abstract, big), on_corrupt=reports.append)
    assert step == 10 and len(reports) == 1
    (report,) = reports
    assert "\n" not in report and len(report) < 800, report
    assert "<bound method" not in report and "TensorStore({" not in report, report
    assert f"{tmp_path / '20'}: cannot be restored (" in report
    # the cause, from tensorstore, says what is wrong
    assert "caused by ValueError: OUT_OF_RANGE" in report and "byte range" in report, report


def _late_callback_error():
    """What tensorstore hands ``sys.unraisablehook`` when a read completes after orbax closed
    its event loop: ``call_soon_threadsafe`` called from C++, with no Python caller."""
    import asyncio

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        return e, e.__traceback__.tb_next  # drop this function's frame, as C++ has none


def _unraisable_args_type(monkeypatch):
    """Python's ``UnraisableHookArgs`` type (not importable): caught from a real unraisable."""
    caught = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)

    class Boom:
        def __del__(self):
            raise ValueError("boom")

    Boom()
    return type(caught[0])


def test_late_tensorstore_callbacks_are_silenced_and_other_errors_are_not(capsys, monkeypatch):
    from jdo.train.checkpoint import quiet_late_tensorstore_callbacks

    args = _unraisable_args_type(monkeypatch)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    error, tb = _late_callback_error()
    late = args((RuntimeError, error, tb, None, None))
    sys.unraisablehook(late)
    assert "Event loop is closed" in capsys.readouterr().err  # Python's own hook prints it
    quiet_late_tensorstore_callbacks()
    quiet_late_tensorstore_callbacks()  # once only
    sys.unraisablehook(late)
    assert capsys.readouterr().err == ""
    assert sys.unraisablehook.dropped == 1
    # the same error with a Python caller (_late_callback_error's frame), any other error,
    # and the same error handed in with an object, still print
    for unraisable in (
        args((RuntimeError, error, error.__traceback__, None, None)),
        args((ValueError, ValueError("real"), tb, None, None)),
        args((RuntimeError, error, tb, None, print)),
    ):
        sys.unraisablehook(unraisable)
    err = capsys.readouterr().err
    assert err.count("RuntimeError: Event loop is closed\n") == 2 and "ValueError: real" in err, err
    assert sys.unraisablehook.dropped == 1


def test_read_state_logs_no_orbax_warning(tmp_path, caplog):
    _save(tmp_path, [10])
    with caplog.at_level(logging.INFO), Checkpointer(str(tmp_path)) as ckpt:
        for _ in range(2):
            state = ckpt.read_state(10)
    assert tree_digest(state) == tree_digest(_state(10))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_read_state_of_a_run_directory_verifies_and_names_what_is_missing(tmp_path):
    from jdo.train.checkpoint import read_state

    run = tmp_path / "run"
    _save(run / "checkpoints", [10, 20])
    assert tree_digest(read_state(str(run))) == tree_digest(_state(20))  # the newest
    assert tree_digest(read_state(str(run), step=10)) == tree_digest(_state(10))
    assert tree_digest(read_state(str(run / "checkpoints"), 10)) == tree_digest(_state(10))
    with pytest.raises(ValueError, match=r"step: 15 is not a checkpoint .* \[10, 20\]"):
        read_state(str(run), step=15)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        read_state(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        read_state(str(tmp_path / "empty"))
    # a checkpoint whose data changed but stays readable (swapped in from step 10)
    shutil.rmtree(run / "checkpoints" / "20" / "state")
    shutil.copytree(run / "checkpoints" / "10" / "state", run / "checkpoints" / "20" / "state")
    with pytest.raises(CorruptCheckpoint, match="20: content digest mismatch"):
        read_state(str(run))
    assert tree_digest(read_state(str(run), verify=False)) == tree_digest(_state(10))
