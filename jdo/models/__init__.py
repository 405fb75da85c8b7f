"""Small Flax NNX models and the split to pure params at the boundary."""

from jdo.models.functional import functional
from jdo.models.nets import CNN, MLP, Linear
from jdo.models.resnet import BatchNorm, ResNet

__all__ = ["CNN", "BatchNorm", "Linear", "MLP", "ResNet", "functional"]
