"""Compressors (payloads that travel instead of dense arrays) and error feedback."""

from jdo.compress.compressors import (
    QSGD,
    Cast,
    Compressor,
    RandK,
    ScaledSign,
    TopK,
    bf16,
    compress_tree,
    decompress_tree,
    fp8,
    identity,
    qsgd,
    random_k,
    scaled_sign,
    top_k,
    tree_wire_bytes,
)

__all__ = [
    "QSGD",
    "Cast",
    "Compressor",
    "RandK",
    "ScaledSign",
    "TopK",
    "bf16",
    "compress_tree",
    "decompress_tree",
    "fp8",
    "identity",
    "qsgd",
    "random_k",
    "scaled_sign",
    "top_k",
    "tree_wire_bytes",
]
