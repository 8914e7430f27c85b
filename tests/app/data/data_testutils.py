"""Helpers shared by the data-layer tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bilevel.app.data.idx import write_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
HAVE_FASHION = all((FASHION_DIR / f).is_file() for f in FASHION_FILES)
requires_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST IDX files not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)


def fake_split(n: int, seed: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels 0..9 and 28x28 uint8 images that are all distinct.

    Pixel [0, 0] holds the label, pixels [0, 1:3] the sample number (offset + i)
    in base 256, the rest is noise.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0] = labels
    images[:, 0, 1] = ids // 256
    images[:, 0, 2] = ids % 256
    return images, labels


def write_fake_dataset(directory: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    """Write the four official IDX files of a small MNIST-like data set into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, offset in (("train", n_train, 0), ("t10k", n_test, 50000)):
        images, labels = fake_split(n, seed=n + offset, offset=offset)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory
