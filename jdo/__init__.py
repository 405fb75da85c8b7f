"""jdo: JAX Distributed Optimization.

Every algorithm is written for ONE worker and talks to the others only through collectives on
a named axis (``jdo.WORKERS``). The same per-worker function is then lifted with ``jax.vmap``
(many workers on one device) or ``jax.shard_map`` (one worker per device); see ``jdo.train``.
"""

from jdo import algorithms, comm, compress, constrained, data, models, topology, train, transforms
from jdo._axis import WORKERS
from jdo.lifting import LIFTINGS, lift

__version__ = "0.1.0"

__all__ = [
    "LIFTINGS",
    "WORKERS",
    "lift",
    "algorithms",
    "comm",
    "compress",
    "constrained",
    "data",
    "models",
    "topology",
    "train",
    "transforms",
    "__version__",
]
