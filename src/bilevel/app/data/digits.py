"""scikit-learn's bundled 8x8 digits: a data set that is always available offline."""

from __future__ import annotations

import numpy as np

#: Largest pixel value of the digits images (they take the values 0..16).
DIGITS_MAX_PIXEL = 16


def load_digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """Load the 1797 handwritten 8x8 digits shipped with scikit-learn.

    Returns
    -------
    images : numpy.ndarray
        ``uint8`` array of shape ``(1797, 8, 8)`` with values 0..16
        (:data:`DIGITS_MAX_PIXEL`), not 0..255.
    labels : numpy.ndarray
        ``int64`` array of shape ``(1797,)`` with values 0..9.
    """
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels
