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


@pytest.fixture
def make_cfg():
    """Composes the real config with overrides, as the command line would."""

    def _compose(*overrides):
        with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
