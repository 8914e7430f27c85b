"""Locating and loading MNIST and Fashion-MNIST from IDX files on disk.

Search order for a dataset ``NAME`` (``"mnist"`` or ``"fashion-mnist"``):

1. the explicit ``root`` argument (``root/`` and ``root/NAME/``);
2. ``$BILEVEL_DATA/NAME/`` and ``$BILEVEL_DATA/`` (``BILEVEL_DATA`` may hold
   several directories separated by ``os.pathsep``);
3. ``~/.cache/bilevel/NAME/`` (where ``bilevel data download NAME`` writes);
4. system directories: ``/usr/share/datasets/fashion-mnist/`` for
   Fashion-MNIST (Debian/Ubuntu package ``dataset-fashion-mnist``).

In each directory the official file names are accepted with or without a
``.gz`` suffix (``train-images-idx3-ubyte.gz`` or ``train-images-idx3-ubyte``,
and the ``train-images.idx3-ubyte`` spelling).  The first directory holding
both the image and label file of the requested split wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bilevel.app.data.idx import PathLike, read_idx

ENV_VAR = "BILEVEL_DATA"

#: Official IDX file stems (without ``.gz``) per split; identical for MNIST and Fashion-MNIST.
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Number of samples in each official split.
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}

#: Directories searched last, per dataset (module-level so tests and packagers can adjust it).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": (),
}

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class IdxDatasetInfo:
    """Static description of an IDX-distributed dataset.

    Attributes
    ----------
    name : str
        Canonical name (``"mnist"`` or ``"fashion-mnist"``).
    title : str
        Human-readable name used in messages.
    class_names : tuple of str
        Name of each label.
    apt_package : str or None
        Debian package that installs the files, if any.
    """

    name: str
    title: str
    class_names: tuple[str, ...]
    apt_package: Optional[str] = None


DATASETS: dict[str, IdxDatasetInfo] = {
    "mnist": IdxDatasetInfo("mnist", "MNIST", MNIST_CLASSES),
    "fashion-mnist": IdxDatasetInfo(
        "fashion-mnist", "Fashion-MNIST", FASHION_MNIST_CLASSES, apt_package="dataset-fashion-mnist"
    ),
}


def dataset_info(name: str) -> IdxDatasetInfo:
    """Return the :class:`IdxDatasetInfo` for ``name``.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"`` (``"fashion_mnist"`` is accepted too).

    Returns
    -------
    IdxDatasetInfo

    Raises
    ------
    ValueError
        For an unknown name.
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown IDX dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def cache_dir(name: Optional[str] = None) -> Path:
    """Return ``~/.cache/bilevel`` or ``~/.cache/bilevel/<name>``.

    Parameters
    ----------
    name : str, optional
        Dataset name appended as a sub-directory.

    Returns
    -------
    pathlib.Path
    """
    base = Path.home() / ".cache" / "bilevel"
    return base / name if name else base


def search_dirs(name: str, root: Optional[PathLike] = None) -> list[Path]:
    """List the directories searched for dataset ``name``, in order.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    root : str or os.PathLike, optional
        Explicit directory searched first (``root`` and ``root/<name>``).

    Returns
    -------
    list of pathlib.Path
        Candidate directories (they need not exist), without duplicates.
    """
    name = dataset_info(name).name
    candidates: list[Path] = []
    if root is not None:
        candidates += [Path(root), Path(root) / name]
    env = os.environ.get(ENV_VAR, "")
    for base in filter(None, env.split(os.pathsep)):
        candidates += [Path(base) / name, Path(base)]
    candidates.append(cache_dir(name))
    candidates += [Path(d) for d in SYSTEM_DIRS.get(name, ())]
    unique: list[Path] = []
    for path in candidates:
        path = path.expanduser()
        if path not in unique:
            unique.append(path)
    return unique


def how_to_get(name: str) -> list[str]:
    """Return the instructions printed when dataset ``name`` is missing.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.

    Returns
    -------
    list of str
        One instruction per line.
    """
    info = dataset_info(name)
    lines = []
    if info.apt_package:
        system = ", ".join(SYSTEM_DIRS.get(info.name, ())) or "/usr/share/datasets"
        lines.append(f"apt-get install {info.apt_package}   (Debian/Ubuntu; installs into {system})")
    lines.append(
        f"bilevel data download {info.name}   (fetches the official files into {cache_dir(info.name)}; "
        "needs network access; same as `python -m bilevel.app.data download`)"
    )
    lines.append(
        f"put the four IDX files (.gz or uncompressed) in a directory DIR and set {ENV_VAR}=DIR "
        f"(files may sit in DIR/{info.name}/ or directly in DIR/)"
    )
    return lines


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are found in none of the searched directories.

    Attributes
    ----------
    dataset : str
        Canonical dataset name.
    searched : list of pathlib.Path
        Every directory that was looked in.
    """

    def __init__(self, dataset: str, searched: Sequence[Path], detail: str = "", hints: Sequence[str] = ()):
        self.dataset = dataset
        self.searched = list(searched)
        lines = [f"{dataset} not found{': ' + detail if detail else ''}.", "Searched directories:"]
        lines += [f"  - {p}{'' if p.is_dir() else '  (does not exist)'}" for p in self.searched]
        if hints:
            lines.append("How to get the data:")
            lines += [f"  - {h}" for h in hints]
        super().__init__("\n".join(lines))

    def __reduce__(self):  # keep the exception picklable despite the custom signature
        return (_rebuild_not_found, (self.args[0], self.dataset, self.searched))


def _rebuild_not_found(message: str, dataset: str, searched: list) -> DatasetNotFoundError:
    exc = DatasetNotFoundError.__new__(DatasetNotFoundError)
    FileNotFoundError.__init__(exc, message)
    exc.dataset, exc.searched = dataset, searched
    return exc


def _find_file(directory: Path, stem: str) -> Optional[Path]:
    """Return the first existing spelling of ``stem`` in ``directory``."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _check_split(split: str) -> str:
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    return split


def find_idx_files(name: str, split: str = "train", root: Optional[PathLike] = None) -> tuple[Path, Path]:
    """Locate the image and label files of one split.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : {"train", "test"}
        Official split.
    root : str or os.PathLike, optional
        Directory searched first.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        Paths of the image file and the label file.

    Raises
    ------
    DatasetNotFoundError
        If no searched directory holds both files; the message lists every
        directory and how to obtain the data.
    """
    info = dataset_info(name)
    image_stem, label_stem = SPLIT_FILES[_check_split(split)]
    searched = search_dirs(info.name, root)
    for directory in searched:
        if not directory.is_dir():
            continue
        images, labels = _find_file(directory, image_stem), _find_file(directory, label_stem)
        if images is not None and labels is not None:
            return images, labels
    raise DatasetNotFoundError(
        info.title,
        searched,
        detail=f"no directory holds both {image_stem}[.gz] and {label_stem}[.gz] (split {split!r})",
        hints=how_to_get(info.name),
    )


def load_idx_dataset(
    name: str, split: str = "train", root: Optional[PathLike] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of an MNIST-format dataset.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : {"train", "test"}
        Official split (60000 or 10000 samples for the real data).
    root : str or os.PathLike, optional
        Directory searched first (see the module docstring for the order).

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array of shape ``(N, 28, 28)``, pixel values 0..255.
    labels : numpy.ndarray
        ``int64`` array of shape ``(N,)`` with values 0..9.

    Raises
    ------
    DatasetNotFoundError
        If the files cannot be found.
    ValueError
        If the files are not valid IDX or have inconsistent shapes.
    """
    image_path, label_path = find_idx_files(name, split, root)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path}: expected {images.shape[0]} labels (one per image), got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{label_path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return images, labels


def load_fashion_mnist(split: str = "train", root: Optional[PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST (Xiao et al., 2017).

    Parameters
    ----------
    split : {"train", "test"}
        ``"train"`` (60000 samples) or ``"test"`` (10000 samples).
    root : str or os.PathLike, optional
        Directory searched first; then ``$BILEVEL_DATA``, ``~/.cache/bilevel``
        and ``/usr/share/datasets/fashion-mnist``.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array ``(N, 28, 28)``.
    labels : numpy.ndarray
        ``int64`` array ``(N,)``; names in :data:`FASHION_MNIST_CLASSES`.
    """
    return load_idx_dataset("fashion-mnist", split, root)


def load_mnist(split: str = "train", root: Optional[PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST handwritten digits.

    Parameters
    ----------
    split : {"train", "test"}
        ``"train"`` (60000 samples) or ``"test"`` (10000 samples).
    root : str or os.PathLike, optional
        Directory searched first; then ``$BILEVEL_DATA`` and ``~/.cache/bilevel``.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array ``(N, 28, 28)``.
    labels : numpy.ndarray
        ``int64`` array ``(N,)``.
    """
    return load_idx_dataset("mnist", split, root)
