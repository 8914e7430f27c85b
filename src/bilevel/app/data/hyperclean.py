"""Train/validation/test splits with corrupted training labels for data hyper-cleaning.

Protocol (as in the BDA / IAPTT-GM / BVFIM hyper-cleaning experiments):
train and validation samples are drawn without overlap from the official
training split, test samples from the official test split; then exactly
``round(noise * train_size)`` training samples, chosen uniformly at random,
get their label replaced by a *different* class drawn uniformly at random.
Validation and test labels stay clean.

An optional *held-out* split (``holdout_size`` samples, clean labels) is drawn from the same pool as train and
validation, after them and disjoint from every other split; adding it leaves the other splits unchanged. It is
for model selection (early stopping, tuning) when the validation split is itself fitted by the upper level.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from bilevel.app.data.digits import DIGITS_MAX_PIXEL, load_digits_dataset
from bilevel.app.data.idx import PathLike
from bilevel.app.data.sources import load_idx_dataset

#: Default (train_size, val_size, test_size) per dataset, used for sizes left as ``None``.
DEFAULT_SIZES: dict[str, tuple[int, int, int]] = {
    "fashion-mnist": (5000, 5000, 10000),
    "mnist": (5000, 5000, 10000),
    "digits": (500, 500, 797),
}
HYPERCLEAN_DATASETS = tuple(DEFAULT_SIZES)


@dataclass(eq=False)
class HypercleanSplit:
    """A data hyper-cleaning problem.

    Attributes
    ----------
    X_train, X_val, X_test : numpy.ndarray
        ``float32`` inputs, shape ``(n, D)`` when flattened, else ``(n, H, W)``.
    y_train : numpy.ndarray
        ``int64`` noisy training labels (what the learner sees).
    y_train_clean : numpy.ndarray
        ``int64`` true training labels.
    corrupted : numpy.ndarray
        ``bool`` mask, True where ``y_train != y_train_clean``.
    y_val, y_test : numpy.ndarray
        ``int64`` clean labels.
    num_classes : int
        Number of classes.
    name : str
        Dataset name.
    noise : float
        Corruption rate rho.
    seed : int
        Seed the split was drawn with.
    X_holdout, y_holdout : numpy.ndarray
        The held-out selection split (clean labels; empty unless ``holdout_size`` was given).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray
    corrupted: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = ""
    noise: float = 0.0
    seed: int = 0
    X_holdout: Optional[np.ndarray] = None
    y_holdout: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.X_holdout is None:
            self.X_holdout = self.X_val[:0]
        if self.y_holdout is None:
            self.y_holdout = self.y_val[:0]

    @property
    def n_corrupted(self) -> int:
        """Number of training samples whose label was replaced."""
        return int(self.corrupted.sum())

    def as_tensors(self, device: Any = None) -> dict[str, Any]:
        """Convert the arrays to torch tensors (torch is imported only here).

        Parameters
        ----------
        device : torch.device or str, optional
            Device for the tensors.

        Returns
        -------
        dict of str to torch.Tensor
            Keys ``X_train, y_train, y_train_clean, corrupted, X_val, y_val, X_test, y_test``.
        """
        import torch

        keys = ("X_train", "y_train", "y_train_clean", "corrupted", "X_val", "y_val", "X_test", "y_test")
        return {k: torch.as_tensor(getattr(self, k), device=device) for k in keys}


def _check_int(label: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_noise(noise: Any) -> float:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (0.0 <= float(noise) <= 1.0):
        raise ValueError(f"noise must be a real number in [0, 1] (fraction of corrupted training labels), got {noise!r}")
    return float(noise)


def corrupt_labels(
    labels: np.ndarray, noise: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace the labels of a random subset by a different, uniformly drawn class.

    Exactly ``round(noise * len(labels))`` positions are corrupted.  Each
    corrupted label becomes ``(y + k) % num_classes`` with ``k`` uniform in
    ``1..num_classes-1``, i.e. uniform over the other classes.  For a fixed
    ``rng`` state the corrupted sets are nested in ``noise``.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels in ``0..num_classes-1``, shape ``(n,)``.
    noise : float
        Fraction rho in [0, 1] of labels to corrupt.
    num_classes : int
        Number of classes (>= 2 when anything is corrupted).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    noisy : numpy.ndarray
        ``int64`` corrupted copy of ``labels``.
    mask : numpy.ndarray
        ``bool`` array, True at corrupted positions.
    """
    noise = _check_noise(noise)
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    k = round(noise * n)
    if k and num_classes < 2:
        raise ValueError(f"label corruption needs num_classes >= 2, got {num_classes}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    order = rng.permutation(n)
    offsets = rng.integers(1, max(num_classes, 2), size=n)
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    noisy = labels.copy()
    noisy[mask] = (labels[mask] + offsets[mask]) % num_classes
    return noisy, mask


def _prepare(images: np.ndarray, max_pixel: int, flatten: bool, normalize: bool) -> np.ndarray:
    x = images.astype(np.float32)
    if normalize:
        x /= np.float32(max_pixel)
    return x.reshape(len(x), int(np.prod(x.shape[1:]))) if flatten else x


def hyperclean_split(
    name: str = "fashion-mnist",
    train_size: Optional[int] = None,
    val_size: Optional[int] = None,
    test_size: Optional[int] = None,
    noise: float = 0.5,
    seed: int = 0,
    root: Optional[PathLike] = None,
    flatten: bool = True,
    normalize: bool = True,
    holdout_size: int = 0,
) -> HypercleanSplit:
    """Build a data hyper-cleaning problem with corrupted training labels.

    Parameters
    ----------
    name : {"fashion-mnist", "mnist", "digits"}
        Dataset.  ``"digits"`` (scikit-learn, 1797 samples) always works offline.
    train_size, val_size, test_size : int, optional
        Number of samples (each >= 1).  ``None`` takes :data:`DEFAULT_SIZES`
        (5000/5000/10000 for the 28x28 sets, 500/500/797 for digits).
        For MNIST-type sets ``train_size + val_size`` must fit in the training
        split and ``test_size`` in the test split; for digits the three must
        sum to at most 1797.
    noise : float
        Fraction rho in [0, 1] of training labels to corrupt.
    seed : int
        Non-negative seed; the result is a deterministic function of it.
        Sample selection and corruption use independent streams, so changing
        ``noise`` keeps the same samples.
    root : str or os.PathLike, optional
        Directory searched first for the IDX files.
    flatten : bool
        Return inputs of shape ``(n, H*W)`` instead of ``(n, H, W)``.
    normalize : bool
        Scale pixels to [0, 1] (divide by 255, or by 16 for digits).
    holdout_size : int
        Clean samples (>= 0) of a held-out selection split, drawn from the training pool after train and
        validation (digits: after all three); the other splits do not depend on it.

    Returns
    -------
    HypercleanSplit

    Raises
    ------
    ValueError
        For an unknown name, invalid sizes/noise/seed, or sizes that do not fit.
    DatasetNotFoundError
        If the MNIST-type files cannot be found.
    """
    key = str(name).lower().replace("_", "-")
    if key not in DEFAULT_SIZES:
        raise ValueError(f"name must be one of {', '.join(HYPERCLEAN_DATASETS)}, got {name!r}")
    defaults = DEFAULT_SIZES[key]
    sizes = [d if v is None else v for v, d in zip((train_size, val_size, test_size), defaults)]
    n_train, n_val, n_test = (
        _check_int(label, v, 1) for label, v in zip(("train_size", "val_size", "test_size"), sizes)
    )
    noise = _check_noise(noise)
    seed = _check_int("seed", seed, 0)
    n_hold = _check_int("holdout_size", holdout_size, 0)
    split_ss, test_ss, noise_ss = np.random.SeedSequence(seed).spawn(3)
    split_rng, test_rng, noise_rng = (np.random.default_rng(s) for s in (split_ss, test_ss, noise_ss))

    if key == "digits":
        images, labels = load_digits_dataset()
        total = n_train + n_val + n_test
        if total + n_hold > len(labels):
            raise ValueError(
                f"digits has {len(labels)} samples: train_size + val_size + test_size + holdout_size = "
                f"{total + n_hold} exceeds the maximum of {len(labels)}"
            )
        order = split_rng.permutation(len(labels))
        tr, va = order[:n_train], order[n_train : n_train + n_val]
        te = order[n_train + n_val : total]
        ho = order[total : total + n_hold]
        train_x, train_y, test_x, test_y = images, labels, images, labels
        max_pixel = DIGITS_MAX_PIXEL
    else:
        train_x, train_y = load_idx_dataset(key, "train", root)
        test_x, test_y = load_idx_dataset(key, "test", root)
        if n_train + n_val + n_hold > len(train_y):
            raise ValueError(
                f"train_size + val_size + holdout_size = {n_train + n_val + n_hold} exceeds the {len(train_y)} "
                f"samples of the {key} training split (maximum {len(train_y)})"
            )
        if n_test > len(test_y):
            raise ValueError(f"test_size = {n_test} exceeds the {key} test split (maximum {len(test_y)})")
        order = split_rng.permutation(len(train_y))
        tr, va = order[:n_train], order[n_train : n_train + n_val]
        te = test_rng.permutation(len(test_y))[:n_test]
        ho = order[n_train + n_val : n_train + n_val + n_hold]
        max_pixel = 255

    num_classes = 10
    y_clean = train_y[tr].astype(np.int64)
    y_noisy, mask = corrupt_labels(y_clean, noise, num_classes, noise_rng)
    return HypercleanSplit(
        X_train=_prepare(train_x[tr], max_pixel, flatten, normalize),
        y_train=y_noisy,
        y_train_clean=y_clean,
        corrupted=mask,
        X_val=_prepare(train_x[va], max_pixel, flatten, normalize),
        y_val=train_y[va].astype(np.int64),
        X_test=_prepare(test_x[te], max_pixel, flatten, normalize),
        y_test=test_y[te].astype(np.int64),
        num_classes=num_classes,
        name=key,
        noise=noise,
        seed=seed,
        X_holdout=_prepare(train_x[ho], max_pixel, flatten, normalize),
        y_holdout=train_y[ho].astype(np.int64),
    )
