"""The runner: lifting, jit, K steps per call, evaluation, logging. Only this package (and
``experiments/``) touches jit, devices, files and logs."""

from jdo.lifting import LIFTINGS, lift
from jdo.train.mesh import make_mesh

__all__ = ["LIFTINGS", "lift", "make_mesh"]
