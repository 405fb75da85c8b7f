"""Test set-up: 8 simulated CPU devices and one compilation cache, set before JAX starts."""

import json
import os
import shutil
import tempfile
import time

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, made by the first process (pytest, or
# xdist's controller, whose environment its workers and their CLI subprocesses inherit) and
# removed at its end: a program another test already compiled (the same config under another
# option, a resumed run, a README command) is loaded instead of compiled again. What runs is
# the same program; the cache starts empty every session. Multi-process runs keep none
# (tests/train/test_reliability.py).
CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="jdo-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
# Generated datasets (task=mnist1d) are cached in this session's own folder, never the user's
# ~/.cache/jdo: made once per session, and no test reads what an earlier session left.
_OWN_DATA_CACHE = None
if "JDO_CACHE_DIR" not in os.environ:
    _OWN_DATA_CACHE = tempfile.mkdtemp(prefix="jdo-test-data-cache-")
    os.environ["JDO_CACHE_DIR"] = _OWN_DATA_CACHE


# JDO_TEST_TIMELINE=FILE appends one JSON line per test (id, xdist worker, start, end): where
# a session's wall time goes, idle workers at its end included.
_TIMELINE = os.environ.get("JDO_TEST_TIMELINE")
if _TIMELINE:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.time()
        yield
        line = {"id": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
        with open(_TIMELINE, "a") as f:
            f.write(json.dumps({**line, "start": start, "end": time.time()}) + "\n")


def pytest_unconfigure(config):
    for own in (_OWN_CACHE, _OWN_DATA_CACHE):
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


import jax
from hydra import compose, initialize_config_dir

CONF = os.path.join(os.path.dirname(__file__), "..", "jdo", "conf")

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def mesh8():
    from jdo.train import make_mesh

    assert len(jax.devices()) == 8, "tests need 8 simulated CPU devices"
    return make_mesh(8)


def compose_cfg(*overrides):
    """The real config composed with ``overrides``, as the command line would compose it."""
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_cfg():
    """:func:`compose_cfg`, as a fixture."""
    return compose_cfg


@pytest.fixture
def float64():
    """64-bit JAX inside the test (for float64 references), 32-bit again after it."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)
