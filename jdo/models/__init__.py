"""Small Flax NNX models and the split to pure params at the boundary."""

from jdo.models.functional import functional
from jdo.models.nets import CNN, MLP, Linear
from jdo.models.resnet import BatchNorm, ResNet
from jdo.models.sequence import CNN1D, GRU, Transformer

__all__ = [
    "CNN",
    "CNN1D",
    "GRU",
    "BatchNorm",
    "Linear",
    "MLP",
    "ResNet",
    "Transformer",
    "functional",
]
