"""The content digest and the Checkpointer: atomic orbax saves plus integrity on restore."""

import os
import shutil

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
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0]))  # fmt: skip


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
        step, _, _ = ckpt.restore_latest(jax.tree.map(_abstract, _state()),
                                         on_corrupt=reports.append)  # fmt: skip
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
            assert ckpt.restore_latest(jax.tree.map(_abstract, _state()),
                                       on_corrupt=lambda m: None) is None  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20.corrupt", "20.corrupt-2"]


def test_a_step_folder_renamed_to_another_step_is_refused(tmp_path):
    _save(tmp_path, [10])
    os.rename(tmp_path / "10", tmp_path / "30")  # would resume at the wrong data position
    reports = []
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.restore_latest(jax.tree.map(_abstract, _state()),
                                   on_corrupt=reports.append) is None  # fmt: skip
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
