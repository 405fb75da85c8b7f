"""Test helpers: small files the tests write (IDX in MNIST format, .npz image sets), the
command line run as a user runs it, and an orbax round trip."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent


def cli_env() -> dict[str, str]:
    """This environment without the tests' XLA_FLAGS: the CLI sets its own device count."""
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def run_cli(*overrides: str, cwd=ROOT, timeout: float = 300, module: str = "experiments.train"):
    """``python -m experiments.train *overrides`` in a fresh process, as a user runs it;
    returns the ``subprocess.CompletedProcess`` (text output)."""
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_cases(cases: list[dict], work: Path, timeout: float = 900) -> list[dict]:
    """Many command lines in ONE fresh process, one after the other (much faster than one
    process each; the exit status is the one the shell would see). Each case is
    ``{"argv": [...], "without": [module, ...]}`` (``without``: modules made unimportable for
    that case); returns ``[{"status": int, "stderr": str}, ...]`` in order."""
    cases_json, out_json = work / "cli_cases.json", work / "cli_results.json"
    cases_json.write_text(json.dumps(cases))
    code = f"import tests.helpers as h; h.cli_cases_here({str(cases_json)!r}, {str(out_json)!r})"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out_json.read_text())


def cli_cases_here(cases_json: str, out_json: str) -> None:
    """The body of :func:`run_cli_cases`, in the fresh process: each case through the CLI's
    entry point, ``SystemExit`` giving its status."""
    from jdo.train.cli import cli

    results = []
    for case in json.loads(Path(cases_json).read_text()):
        sys.argv = ["jdo-train", *case["argv"]]
        hidden = {m: sys.modules.get(m) for m in case.get("without", [])}
        sys.modules.update(dict.fromkeys(hidden))  # None in sys.modules: ImportError
        err, code = io.StringIO(), 0
        with contextlib.redirect_stderr(err):
            try:
                cli()
            except SystemExit as e:
                code = 0 if e.code is None else e.code
        for m, module in hidden.items():
            if module is None:
                del sys.modules[m]
            else:
                sys.modules[m] = module
        results.append({"status": code, "stderr": err.getvalue()})
    Path(out_json).write_text(json.dumps(results))


def write_idx(path: str, array: np.ndarray, compress: bool = False) -> str:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + big_endian.tobytes())
    return path


def write_mnist_dir(directory: str, n_train: int = 64, n_test: int = 32, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            os.path.join(directory, f"{split}-images-idx3-ubyte"),
            rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8),
        )
        write_idx(
            os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"),
            (np.arange(n) % 10).astype(np.uint8),
            compress=True,
        )
    return directory


def write_npz(path: str, n_train: int = 64, n_test: int = 32, shape=(32, 32, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(n_train, *shape)).astype(np.uint8),
        y_train=(np.arange(n_train) % 10).astype(np.int64)[:, None],
        x_test=rng.integers(0, 256, size=(n_test, *shape)).astype(np.uint8),
        y_test=(np.arange(n_test) % 10).astype(np.int64),
    )
    return path


def orbax_round_trip(state, directory):
    """``state`` saved with orbax's StandardCheckpointer and restored onto its own shapes."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, state)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(directory, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))


def lifted(algo, lifting: str = "vmap", mesh=None, *, batch_axis=0, key_axis=None):
    """An ``Algorithm``'s ``(init, step)``, lifted over the workers and jitted, as most tests
    write them: ``init(params, keys)`` with the params shared and one key per worker;
    ``step(state, batch, key)`` with a per-worker batch (``batch_axis=None``: shared, e.g. RL's
    ``None``) and one shared key (``key_axis=0``: one per worker)."""
    import jax

    from jdo import lift

    init = jax.jit(lift(algo.init, lifting, mesh=mesh, in_axes=(None, 0)))
    step = jax.jit(lift(algo.step, lifting, mesh=mesh, in_axes=(0, batch_axis, key_axis)))
    return init, step
