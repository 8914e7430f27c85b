"""Rotated Fashion-MNIST: an offline stand-in for Omniglot in few-shot experiments.

Each Fashion-MNIST image is used at 0, 90, 180 and 270 degrees and every
(original class, rotation) pair is its own class: class id
``original_class * 4 + rotation_index``, 40 classes in total.  The meta-train /
meta-test split is made by *original* class (default: classes 0-5 give the 24
meta-train classes, 6-9 the 16 meta-test classes), so no rotation of a
meta-test class is ever seen during meta-training.  Images of both official
splits (70000 in all) are used.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import numpy as np

from bilevel.app.data.idx import PathLike
from bilevel.app.data.images import FewShotData, Size, _as_hw, add_rotations, resize_area
from bilevel.app.data.sources import FASHION_MNIST_CLASSES, load_fashion_mnist

#: Original Fashion-MNIST classes used for meta-training by default (the rest are meta-test).
DEFAULT_META_TRAIN_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
META_SPLITS = ("train", "test")


def meta_split_classes(
    split: str = "train", meta_train_classes: Sequence[int] = DEFAULT_META_TRAIN_CLASSES
) -> tuple[int, ...]:
    """Return the original Fashion-MNIST classes of a meta split.

    Parameters
    ----------
    split : {"train", "test"}
        Meta split.
    meta_train_classes : sequence of int
        Original classes (0..9) reserved for meta-training; meta-test gets the
        others.  Must be a non-empty proper subset of 0..9.

    Returns
    -------
    tuple of int
        Sorted original class ids.
    """
    if split not in META_SPLITS:
        raise ValueError(f"split must be one of {META_SPLITS}, got {split!r}")
    chosen = set()
    for c in meta_train_classes:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c <= 9:
            raise ValueError(f"meta_train_classes must contain integers in 0..9, got {c!r}")
        chosen.add(int(c))
    if not 0 < len(chosen) < 10:
        raise ValueError(
            "meta_train_classes must be a non-empty proper subset of 0..9 so both meta splits have classes, "
            f"got {sorted(chosen)}"
        )
    classes = chosen if split == "train" else set(range(10)) - chosen
    return tuple(sorted(classes))


def rotated_fashion_mnist(
    root: Optional[PathLike] = None,
    split: str = "train",
    image_size: Size = 28,
    meta_train_classes: Sequence[int] = DEFAULT_META_TRAIN_CLASSES,
    max_per_class: Optional[int] = None,
    seed: int = 0,
) -> FewShotData:
    """Load the rotated Fashion-MNIST meta split.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory searched first for the Fashion-MNIST IDX files.
    split : {"train", "test"}
        Meta split: ``"train"`` uses the original classes in
        ``meta_train_classes``, ``"test"`` all the others.
    image_size : int or (int, int)
        Square output size (area-averaging resize when not 28).
    meta_train_classes : sequence of int
        Original classes of the meta-train split (default 0-5).
    max_per_class : int, optional
        Keep at most this many images per original class (chosen with
        ``seed``) before rotating, e.g. 20 to mimic Omniglot's size.
    seed : int
        Seed of the ``max_per_class`` subsampling.

    Returns
    -------
    FewShotData
        ``uint8`` images ``(N, S, S)``, labels ``4 * original + rotation`` and
        names such as ``"Sandal@90"``.
    """
    originals = meta_split_classes(split, meta_train_classes)
    h, w = _as_hw(image_size)
    if h != w:
        raise ValueError(f"rotations need a square image_size, got {image_size!r}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive integer or None, got {max_per_class!r}")
    parts = [load_fashion_mnist(s, root) for s in ("train", "test")]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    rng = np.random.default_rng(seed)
    keep = []
    for c in originals:
        idx = np.flatnonzero(labels == c)
        if max_per_class is not None and len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        keep.append(idx)
    keep_idx = np.concatenate(keep)
    images, labels = images[keep_idx], labels[keep_idx]
    if (h, w) != images.shape[1:]:
        images = resize_area(images, h)
    names = {c: FASHION_MNIST_CLASSES[c] for c in originals}
    return add_rotations(images, labels, names)
