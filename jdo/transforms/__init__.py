"""Optax transforms that communicate over the worker axis: the import-into-your-loop surface."""

from jdo.transforms.all_reduce import all_reduce

__all__ = ["all_reduce"]
