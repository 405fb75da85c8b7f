"""Test set-up: 8 simulated CPU devices, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest
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
