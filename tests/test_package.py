"""What importing jdo costs, and what the package declares: checked in fresh processes (this
test process has long imported everything)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUNNER_ONLY = ("hydra", "omegaconf", "orbax", "networkx")


def _loaded_after(statement: str, names) -> list[str]:
    """Which of the top-level modules ``names`` a fresh interpreter has loaded after
    ``statement`` (run from the checkout, so its ``jdo`` is the one imported)."""
    report = f"import sys; print(*(n for n in {tuple(names)!r} if n in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}\n{report}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("module", ["jdo.transforms", "jdo.comm", "jdo.compress"])
def test_the_optax_surface_loads_no_runner_dependency(module):
    assert _loaded_after(f"import {module}", RUNNER_ONLY) == []


def test_import_jdo_starts_nothing_heavy():
    assert _loaded_after("import jdo", ("jax", *RUNNER_ONLY)) == []


def test_jdo_train_names_are_there_on_first_use():
    loaded = _loaded_after("import jdo; jdo.train.run; jdo.transforms.gossip", ("hydra", "optax"))
    assert loaded == ["hydra", "optax"]


def test_the_dev_extra_holds_every_other_extra():
    """``pip install -e '.[dev]'`` (scripts/setup.sh) must install what every test needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = next(d for d in extras["dev"] if d.startswith("jdo["))
    included = set(dev[len("jdo[") : dev.index("]")].split(","))
    gpu = {"cuda", "cuda13"}
    assert included == set(extras) - gpu - {"dev"}


def _readme_python_blocks(start: str, end: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index(start) : text.index(end)]
    return re.findall(r"```python\n(.*?)```", part, re.S)


def test_the_readme_own_training_loop_snippets_run():
    """README "3. Your own training loop": both snippets, in order, in one namespace, as a user
    pastes them (8 simulated devices here, as the shard_map line needs)."""
    import jax

    blocks = _readme_python_blocks("**3. Your own training loop.**", "`jdo.comm.collective_bytes")
    assert len(blocks) == 2
    ns = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md, own-loop snippet {i + 1}", "exec"), ns)  # noqa: S102
    worker0 = jax.tree.map(lambda a: a[0], (ns["params"], ns["batch"]))
    assert float(ns["loss_fn"](*worker0)) < 1e-6  # all-reduce Adam reached the shared optimum
    assert float(ns["metrics"]["mse"].max()) < 1e-6  # so did gradient tracking, on every worker


def test_jdo_train_names_are_not_shadowed_by_its_submodules():
    """Importing ``jdo.train.x`` sets the package attribute ``x`` to the module: an exported
    name equal to a submodule's (``build``) would turn into that module once anything imported
    it, whatever the lazy ``__getattr__`` says."""
    code = (
        "import importlib, inspect, pkgutil, jdo.train as t\n"
        "for m in pkgutil.iter_modules(t.__path__):\n"
        "    importlib.import_module(f'jdo.train.{m.name}')\n"
        "print(*(n for n in t.__all__ if inspect.ismodule(getattr(t, n))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
