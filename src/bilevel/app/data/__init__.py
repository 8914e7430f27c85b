"""Data layer of ``bilevel``: datasets for data hyper-cleaning and few-shot learning.

Everything here is numpy-based; torch is imported only by the ``as_tensors``
helpers.  See ``docs/data.md`` for the search order of the loaders and how to
obtain the data.
"""

from bilevel.app.data.digits import DIGITS_MAX_PIXEL, load_digits_dataset
from bilevel.app.data.fetch import (
    DEFAULT_BASE_URLS,
    FASHION_MNIST_BASE_URL,
    MIRRORS,
    MNIST_BASE_URL,
    OFFICIAL_FILES,
    DownloadError,
    download,
)
from bilevel.app.data.episodes import Episode, EpisodeIndex, EpisodeSampler
from bilevel.app.data.hyperclean import DEFAULT_SIZES, HypercleanSplit, corrupt_labels, hyperclean_split
from bilevel.app.data.idx import decode_idx, encode_idx, read_idx, write_idx
from bilevel.app.data.images import FewShotData, add_rotations, load_image_folder, load_omniglot, read_image, resize_area
from bilevel.app.data.rotated import DEFAULT_META_TRAIN_CLASSES, meta_split_classes, rotated_fashion_mnist
from bilevel.app.data.sources import (
    ENV_VAR,
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    cache_dir,
    find_idx_files,
    load_fashion_mnist,
    load_idx_dataset,
    load_mnist,
    search_dirs,
)

__all__ = [
    "DEFAULT_BASE_URLS",
    "DEFAULT_META_TRAIN_CLASSES",
    "DEFAULT_SIZES",
    "DIGITS_MAX_PIXEL",
    "ENV_VAR",
    "FASHION_MNIST_BASE_URL",
    "FASHION_MNIST_CLASSES",
    "MIRRORS",
    "MNIST_BASE_URL",
    "OFFICIAL_FILES",
    "DatasetNotFoundError",
    "DownloadError",
    "Episode",
    "EpisodeIndex",
    "EpisodeSampler",
    "FewShotData",
    "HypercleanSplit",
    "add_rotations",
    "cache_dir",
    "corrupt_labels",
    "decode_idx",
    "download",
    "encode_idx",
    "find_idx_files",
    "hyperclean_split",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist",
    "load_omniglot",
    "meta_split_classes",
    "read_idx",
    "read_image",
    "resize_area",
    "rotated_fashion_mnist",
    "search_dirs",
    "write_idx",
]
