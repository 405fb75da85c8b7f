"""Data: bundled and local datasets, synthetic problems with known optima, worker partitions,
per-worker batches and losses."""

from jdo.data import partition
from jdo.data.augment import image_augment, random_crop_flip
from jdo.data.batching import sample_batch
from jdo.data.datasets import Dataset, digits, from_npz, load_idx, mnist_idx
from jdo.data.images import cifar10, cifar10_synthetic, mnist_small
from jdo.data.losses import make_loss
from jdo.data.partition import WorkerData
from jdo.data.sequences import mnist1d
from jdo.data.synthetic import heterogeneous_least_squares, least_squares, logistic_regression

__all__ = [
    "Dataset",
    "WorkerData",
    "cifar10",
    "cifar10_synthetic",
    "digits",
    "from_npz",
    "heterogeneous_least_squares",
    "image_augment",
    "least_squares",
    "load_idx",
    "logistic_regression",
    "make_loss",
    "mnist1d",
    "mnist_idx",
    "mnist_small",
    "partition",
    "random_crop_flip",
    "sample_batch",
]
