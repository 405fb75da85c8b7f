"""jdo's Hydra configs (found as ``pkg://jdo.conf``; one folder per config group).

Importing this package registers the ``${jdo_run_id:}`` resolver used by the default run
directories: a short random id, the same for the whole process, so two runs started in the same
second never share a directory.
"""

import secrets

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("jdo_run_id"):
    OmegaConf.register_new_resolver("jdo_run_id", lambda: secrets.token_hex(3), use_cache=True)
