"""Small Flax NNX models and the split to pure params at the boundary."""

from jdo.models.functional import functional
from jdo.models.nets import CNN, MLP, Linear

__all__ = ["CNN", "Linear", "MLP", "functional"]
