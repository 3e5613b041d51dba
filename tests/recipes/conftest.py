"""Fixtures of the recipe tests: a tiny Fashion-MNIST in the real idx format, written to a temp dir."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped idx file (magic 0x0800 | ndim, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A data dir with 960 training and 160 test items: blobs whose position depends on the label."""
    root = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 960), ("t10k", 160)):
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            top, left = 2 + 2 * (label // 5) * 5, 2 + 4 * (label % 5)
            images[i, top : top + 10, left : left + 8] = rng.integers(150, 256)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root
