"""Checkpoints with integrity: orbax's ``CheckpointManager`` plus a content digest.

orbax commits a checkpoint atomically (a killed save leaves a ``*.orbax-checkpoint-tmp`` folder
that is ignored) but stores no checksum: a flipped bit restores silently. Every checkpoint here
carries :func:`tree_digest` of its state in its JSON metadata, and :meth:`Checkpointer.restore`
recomputes it on the restored arrays. A checkpoint that fails to restore or to verify is
reported by its path, moved aside to ``<step>.corrupt`` (never deleted) and the previous one is
tried.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jdo")

DIGEST_KEY = "digest"
STRUCTURE_KEY = "structure"
META_DIGEST_KEY = "meta_digest"
# Errors that are not the checkpoint's fault (out of memory, too many open files, a storage
# system that is briefly unavailable): they propagate instead of condemning the checkpoint.
_NOT_DAMAGE = (
    "RESOURCE_EXHAUSTED",
    "out of memory",
    "Out of memory",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "Too many open files",
    "No space left",
)
_NOT_DAMAGE_ERRNO = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EIO)


# ----------------------------------------------------------------------------------------------
# Content digest
# ----------------------------------------------------------------------------------------------


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser: a bijection of uint32 that spreads every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The raw bits of ``x`` as a flat uint32 vector (8-byte types give two words each)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    if size == 8:  # bitcast to a narrower type adds a trailing axis of 2
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _lanes(x: jax.Array) -> jax.Array:
    """Two 32-bit sums of position-keyed bijections of ``x``'s words.

    Changing any one word changes each lane (a bijection of a word changes its term, and the
    sum is mod 2^32), so a single flipped bit is always detected; unrelated changes collide
    with probability ~2^-64. Integer sums are exact, so the value does not depend on how the
    array is sharded or on how many devices compute it.
    """
    w = _words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    a = _fmix32(w ^ (i * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)))
    b = _fmix32((w * jnp.uint32(0x27D4EB2F)) ^ _fmix32(i + jnp.uint32(0x165667B1)))
    return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


@jax.jit
def _all_lanes(leaves):
    return [_lanes(x) for x in leaves]


def _entries(tree) -> list[tuple[str, Any]]:
    """``(path, leaf)`` sorted by path, the path written ``a/b/0`` whatever the containers
    (a NamedTuple saved by orbax comes back as a dict with the same names)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted(
        ((jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in flat),
        key=lambda e: e[0],
    )


def tree_signature(tree, skip_leading: bool = False) -> list[str]:
    """``path:dtype:shape`` of every leaf, sorted: what a checkpoint must match to be restored
    into ``tree`` (``skip_leading``: without the leading worker axis)."""
    out = []
    for path, x in _entries(tree):
        shape = tuple(x.shape[1:] if skip_leading else x.shape)
        out.append(f"{path}:{x.dtype}:{list(shape)}")
    return out


def tree_digest(tree) -> str:
    """A hex digest of a pytree's leaf names, shapes, dtypes and every bit of its values.

    Computed on the devices that hold the arrays (nothing is copied to the host but two words
    per leaf), so it costs one pass over the state and works on any sharding, including arrays
    spread over several processes.
    """
    entries = _entries(tree)
    leaves = [jnp.asarray(x) for _, x in entries]
    lanes = jax.device_get(_all_lanes(leaves))
    h = hashlib.sha256()
    for (path, _), x, lane in zip(entries, leaves, lanes, strict=True):
        h.update(f"{path}:{x.dtype}:{x.shape};".encode())
        h.update(np.asarray(lane, np.uint32).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Checkpointer
# ----------------------------------------------------------------------------------------------


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """The step, worker count, counters and config are part of what a checkpoint restores."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _is_damage(e: BaseException) -> bool:
    """Whether a failed read means the checkpoint's files are damaged (orbax and tensorstore
    report damage with many exception types, so this lists what is *not* damage)."""
    if isinstance(e, MemoryError) or not isinstance(e, Exception):
        return False
    if isinstance(e, OSError) and e.errno in _NOT_DAMAGE_ERRNO:
        return False
    return not any(mark in str(e) for mark in _NOT_DAMAGE)


_SPEC_TAILS = (" See full TensorStore details", " [tensorstore_spec", " [source locations")


def _clause(e: BaseException) -> str:
    """An error's message on one line, without the specs tensorstore and orbax append (orbax's
    "See full TensorStore details: <bound method ... of TensorStore({...})>" is a repr)."""
    text = " ".join(str(e).split())
    for tail in _SPEC_TAILS:
        text = text.split(tail)[0]
    return text.rstrip(" :.")


def _short(e: BaseException, limit: int = 500) -> str:
    """One readable line for a failed read: the error's first clause, then its causes' (orbax
    wraps tensorstore's error, which says what is wrong, in one that says where)."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen and len(parts) < 4:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {_clause(e)}")
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    text = "; caused by ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _all_processes(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _late_tensorstore_callback(unraisable) -> bool:
    """Whether an unraisable error is tensorstore completing a read for an asyncio loop that
    orbax already closed (after a failed restore): a ``RuntimeError('Event loop is closed')``
    raised by ``call_soon_threadsafe`` called directly from C++, with no Python caller."""
    tb = unraisable.exc_traceback
    return (
        unraisable.exc_type is RuntimeError
        and str(unraisable.exc_value) == "Event loop is closed"
        and unraisable.object is None
        and tb is not None
        and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
        and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py"))
    )


class _QuietLateCallbacks:
    """``sys.unraisablehook`` that drops :func:`_late_tensorstore_callback` errors (each printed
    a traceback on stderr after a damaged checkpoint was already reported) and hands every
    other one to the hook it replaced."""

    def __init__(self, previous):
        self.previous, self.dropped = previous, 0

    def __call__(self, unraisable):
        if _late_tensorstore_callback(unraisable):
            self.dropped += 1
            return
        self.previous(unraisable)


def quiet_late_tensorstore_callbacks() -> None:
    """Installs :class:`_QuietLateCallbacks` once (idempotent)."""
    if not isinstance(sys.unraisablehook, _QuietLateCallbacks):
        sys.unraisablehook = _QuietLateCallbacks(sys.unraisablehook)


class CorruptCheckpoint(RuntimeError):
    """A checkpoint that cannot be restored or whose digest does not match."""


class IncompatibleCheckpoint(ValueError):
    """An intact checkpoint of a different state (another algorithm, model or version)."""


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory/<step>`` with orbax.

    Args:
      directory: where the step folders go (created if missing).
      keep_last: how many of the newest checkpoints to keep (orbax ``max_to_keep``).
      keep_every: also keep every checkpoint whose step is a multiple of this (``keep_period``).
      async_save: write in a background thread; :meth:`save` returns after the device-to-host
        copy, so the caller may donate the state right away.
    """

    def __init__(
        self,
        directory: str,
        *,
        keep_last: int = 3,
        keep_every: int | None = None,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            keep_period=keep_every,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Committed checkpoint steps, oldest first (unverified)."""
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, meta: Mapping[str, Any]) -> float:
        """Starts saving ``state`` with ``meta`` (JSON) and its digests; returns the seconds the
        caller was blocked (digest + device-to-host copy; the write goes on in the background)."""
        t0 = time.perf_counter()
        meta = {
            **meta,
            "step": int(step),
            DIGEST_KEY: tree_digest(state),
            STRUCTURE_KEY: tree_signature(state, skip_leading=True),
        }
        meta[META_DIGEST_KEY] = _meta_digest(meta)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        return time.perf_counter() - t0

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step`` (no array is read)."""
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def read_state(self, step: int):
        """Checkpoint ``step``'s state on this process's first device, with orbax's own tree
        containers (dicts and lists) and no digest check: for inspection, whatever devices and
        processes wrote it (:func:`read_state` checks the digest)."""
        handler = ocp.StandardCheckpointHandler()  # reads the item's own metadata, no warning
        try:
            saved = handler.metadata(pathlib.Path(self.path(step)) / "state").tree
        finally:
            handler.close()
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return self._manager.restore(step, args=args)["state"]

    def verified_meta(self, step: int) -> dict[str, Any]:
        """:meth:`read_meta`, checked: raises :class:`CorruptCheckpoint` if it is unreadable,
        altered or filed under another step."""
        path = self.path(step)
        try:
            meta = self.read_meta(step)
        except Exception as e:
            if not _is_damage(e):
                raise
            raise CorruptCheckpoint(f"{path}: unreadable metadata ({_short(e)})") from None
        stored = meta.get(META_DIGEST_KEY)
        if stored is None or stored != _meta_digest(meta) or meta.get("step") != step:
            raise CorruptCheckpoint(
                f"{path}: its metadata was altered or belongs to step {meta.get('step')}"
            )
        return meta

    def restore_step(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint ``step`` onto ``abstract_state``'s shapes and shardings and
        verifies its digest; raises :class:`CorruptCheckpoint` naming the path otherwise, or
        :class:`IncompatibleCheckpoint` if it holds a different kind of state. Errors that are
        not damage to the files (out of memory, too many open files) propagate.

        With several processes, each restores its own shards: they agree on the outcome before
        the digest (a collective) is computed, so they always make the same calls."""
        path = self.path(step)
        meta = self.verified_meta(step)
        wanted = tree_signature(abstract_state, skip_leading=True)
        saved = meta.get(STRUCTURE_KEY)
        if saved is not None and saved != wanted:
            extra = sorted(set(saved) - set(wanted))
            missing = sorted(set(wanted) - set(saved))
            raise IncompatibleCheckpoint(
                f"{path} holds a different state than this run's (it has "
                f"{extra[:1] or 'nothing more'}, lacks {missing[:1] or 'nothing'}): written by "
                "another algorithm, model or jdo version"
            )
        state, damage = None, None
        try:
            state = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )["state"]
        except Exception as e:
            if not _is_damage(e):
                raise
            quiet_late_tensorstore_callbacks()  # its pending reads complete into a closed loop
            damage = f"{path}: cannot be restored ({_short(e)})"
        if not _all_processes(damage is None):
            raise CorruptCheckpoint(damage or f"{path}: cannot be restored on another process")
        actual = tree_digest(state)
        if actual != meta.get(DIGEST_KEY):
            raise CorruptCheckpoint(
                f"{path}: content digest mismatch (stored {str(meta.get(DIGEST_KEY))[:16]}…, "
                f"restored data {actual[:16]}…): the files were altered after saving"
            )
        return state, meta

    def restore_latest(
        self,
        abstract_state: Any | Callable[[dict[str, Any]], Any],
        *,
        on_corrupt: Callable[[str], None] | None = None,
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """The newest checkpoint that restores and verifies, as ``(step, state, meta)``; None
        if there is none. ``abstract_state`` may be a function of the checkpoint's metadata
        (e.g. a different worker count). A damaged checkpoint is reported (``on_corrupt`` or a
        warning), moved aside to ``<step>.corrupt[-n]`` (never deleted) and the previous one
        is tried; an intact one of another kind of state raises
        :class:`IncompatibleCheckpoint` (nothing moved)."""
        for step in reversed(self.steps()):
            try:
                target = abstract_state
                if callable(abstract_state):
                    target = abstract_state(self.verified_meta(step))  # a refusal propagates
                state, meta = self.restore_step(step, target)
                return step, state, meta
            except CorruptCheckpoint as e:
                message = f"corrupt checkpoint {e}; moved aside, trying the previous one"
                (on_corrupt or log.warning)(message)
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        path = self.path(step)
        if jax.process_index() == 0:
            target, n = f"{path}.corrupt", 1
            while os.path.exists(target):  # the same step may go bad twice
                n += 1
                target = f"{path}.corrupt-{n}"
            os.replace(path, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jdo quarantine {step}")
        self._manager.reload()  # orbax caches the list of steps

    def wait(self) -> None:
        """Blocks until the pending asynchronous save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_state(run_dir: str, step: int | None = None, *, verify: bool = True):
    """Loads a run's trained state: how to get a run's parameters (or an RL run's policy) back
    into Python after ``jdo-train``.

        state = jdo.train.read_state("outputs/2026-01-01/12-00-00")
        params = state["params"]                            # every worker's, leading axis W
        average = jax.tree.map(lambda x: x.mean(0), params)  # the averaged model

    Args:
      run_dir: the run directory (``hydra.run.dir``; its ``checkpoints/`` is read) or a
        checkpoint directory itself.
      step: which checkpoint; None for the newest.
      verify: recompute the content digest stored at save time and raise
        :class:`CorruptCheckpoint` if the data was altered.

    Returns the state as nested dicts and lists of arrays on this process's first device (the
    containers orbax stores, e.g. a NamedTuple comes back as a dict with its field names),
    whatever devices and processes wrote it. Raises ``FileNotFoundError`` if there is no
    checkpoint, ``ValueError`` for a step that is not one.
    """
    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        directory = run_dir
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    with Checkpointer(directory) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise FileNotFoundError(
                f"{directory}: holds no checkpoint (a run with checkpoint=none keeps no state)"
            )
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"step: {step} is not a checkpoint in {directory} (it has {steps})")
        state = ckpt.read_state(step)
        if verify:
            stored = ckpt.verified_meta(step).get(DIGEST_KEY)
            if tree_digest(state) != stored:
                raise CorruptCheckpoint(
                    f"{ckpt.path(step)}: content digest mismatch: the files were altered after "
                    "saving"
                )
    return state
