"""jdo's presets for Hydra's sweeper and launcher plugins: ``hydra/sweeper=optuna``
(hydra-optuna-sweeper, ``pip install 'jdo[sweep]'``) and ``hydra/launcher=ray``
(hydra-ray-launcher, ``pip install 'jdo[ray]'``).

The objective a sweeper optimizes is the run's summary metric named by ``objective.metric``
(``jdo/conf/config.yaml``), returned by the CLI's task function (``jdo.train.cli.main``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("jdo")


def register_presets() -> None:
    """jdo's settings for the plugins' ``hydra/sweeper=optuna`` and ``hydra/launcher=ray``.

    optuna: ``direction`` follows ``objective.direction``, one trial per batch (``n_jobs: 1``:
    each proposal sees every result so far; raise it with a parallel launcher). ray:
    every job in a fresh worker process (``max_calls: 1``: JAX starts anew with the job's own
    devices) with this process's ``jdo`` first on its path (a checkout runs the same code), one
    CPU reserved per job, no dashboard. Everything else is the plugin's (a local Ray node must
    start within Ray's fixed 30 s: on a loaded machine start one first, ``ray start --head``, and
    join it with ``hydra.launcher.ray.init.address=auto``). A yaml of the same name in jdo/conf
    cannot extend the plugin's config (Hydra matches it against the plugin's schema and refuses
    a schema with a defaults list), so the plugin's entries in Hydra's ConfigStore are replaced,
    once Hydra has imported the installed plugins. Plugins not installed: nothing registered.
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which store their own configs
    logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's import: a line per plugin
    store = ConfigStore.instance()
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    except ImportError:
        pass
    else:
        node = OptunaSweeperConf(direction="${objective.direction}", n_jobs=1)
        store.store(group="hydra/sweeper", name="optuna", node=node, provider="jdo")
    try:
        from hydra_plugins.hydra_ray_launcher._config import RayConf, RayLauncherConf
    except ImportError:
        pass
    else:
        init = {"address": None, "include_dashboard": False}
        remote = {"num_cpus": 1, "max_calls": 1, "runtime_env": {"env_vars": _jdo_path()}}
        node = RayLauncherConf(ray=RayConf(init=init, remote=remote))
        store.store(group="hydra/launcher", name="ray", node=node, provider="jdo")


def _jdo_path() -> dict[str, str]:
    """``PYTHONPATH`` with the folder this ``jdo`` was imported from first."""
    import jdo

    root = os.path.dirname(os.path.dirname(os.path.abspath(jdo.__file__)))
    return {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
