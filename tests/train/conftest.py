import os

import pytest
from hydra import compose, initialize_config_dir

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")


@pytest.fixture
def make_cfg():
    """Composes the real config with overrides, as the command line would."""

    def _compose(*overrides):
        with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
