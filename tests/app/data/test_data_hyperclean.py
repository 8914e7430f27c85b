"""Hyper-cleaning splits: sizes, disjointness, exact corruption protocol, determinism, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel.app.data import HypercleanSplit, corrupt_labels, hyperclean_split

from data_testutils import FASHION_DIR, requires_fashion


def sample_ids(x: np.ndarray) -> set[int]:
    """Recover the sample number the fake data writes into pixels [0, 1:3] (normalize=False, flatten=False)."""
    return set((x[:, 0, 1].astype(int) * 256 + x[:, 0, 2].astype(int)).tolist())


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 400),
    noise=st.floats(0, 1),
    num_classes=st.integers(2, 12),
    seed=st.integers(0, 2**32),
)
def test_corruption_is_exact_and_always_changes_the_label(n, noise, num_classes, seed):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, num_classes, size=n)
    noisy, mask = corrupt_labels(clean, noise, num_classes, np.random.default_rng(seed + 1))
    assert mask.dtype == bool and noisy.dtype == np.int64
    assert mask.sum() == round(noise * n)
    assert np.all(noisy[mask] != clean[mask])
    assert np.array_equal(noisy[~mask], clean[~mask])
    assert noisy.min(initial=0) >= 0 and noisy.max(initial=0) < num_classes


def test_corrupted_labels_are_uniform_over_the_other_classes():
    clean = np.full(90000, 3)
    noisy, mask = corrupt_labels(clean, 1.0, 10, np.random.default_rng(0))
    counts = np.bincount(noisy, minlength=10)
    assert counts[3] == 0
    others = np.delete(counts, 3)
    assert np.all(np.abs(others - 10000) < 500)  # each of the 9 other classes ~ 1/9


def test_corruption_sets_are_nested_in_noise():
    clean = np.random.default_rng(0).integers(0, 10, size=1000)
    low, m_low = corrupt_labels(clean, 0.2, 10, np.random.default_rng(5))
    high, m_high = corrupt_labels(clean, 0.6, 10, np.random.default_rng(5))
    assert np.all(m_high[m_low])
    assert np.array_equal(low[m_low], high[m_low])


def test_digits_split_contents():
    split = hyperclean_split("digits", 400, 300, 200, noise=0.3, seed=7)
    assert isinstance(split, HypercleanSplit)
    assert split.X_train.shape == (400, 64) and split.X_val.shape == (300, 64) and split.X_test.shape == (200, 64)
    for x in (split.X_train, split.X_val, split.X_test):
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert split.X_train.max() == 1.0
    for y in (split.y_train, split.y_train_clean, split.y_val, split.y_test):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 9
    assert split.num_classes == 10 and split.name == "digits"
    assert split.n_corrupted == 120 == round(0.3 * 400)
    assert np.array_equal(split.corrupted, split.y_train != split.y_train_clean)


def test_digits_defaults_and_size_limit():
    split = hyperclean_split("digits")
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (500, 500, 797)
    assert split.n_corrupted == 250
    with pytest.raises(ValueError, match="maximum of 1797"):
        hyperclean_split("digits", 1000, 500, 298)


def test_determinism_and_seed_dependence():
    a = hyperclean_split("digits", 300, 200, 100, noise=0.5, seed=3)
    b = hyperclean_split("digits", 300, 200, 100, noise=0.5, seed=3)
    c = hyperclean_split("digits", 300, 200, 100, noise=0.5, seed=4)
    for field in ("X_train", "y_train", "y_train_clean", "corrupted", "X_val", "y_val", "X_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.X_train, c.X_train)
    # changing the noise level keeps the same samples
    d = hyperclean_split("digits", 300, 200, 100, noise=0.1, seed=3)
    assert np.array_equal(a.X_train, d.X_train) and np.array_equal(a.y_train_clean, d.y_train_clean)


def test_idx_split_is_disjoint_and_uses_the_right_official_splits(fake_root):
    split = hyperclean_split("mnist", 120, 80, 50, noise=0.25, seed=1, root=fake_root, flatten=False, normalize=False)
    assert split.X_train.shape == (120, 28, 28) and split.X_train.dtype == np.float32
    train_ids, val_ids, test_ids = sample_ids(split.X_train), sample_ids(split.X_val), sample_ids(split.X_test)
    assert len(train_ids) == 120 and len(val_ids) == 80 and len(test_ids) == 50
    assert not train_ids & val_ids
    assert max(train_ids | val_ids) < 300  # official training split: ids 0..299
    assert min(test_ids) >= 50000  # official test split ids start at 50000 in the fake data
    # labels travel with their images (pixel [0, 0] holds the true label)
    assert np.array_equal(split.X_train[:, 0, 0].astype(int), split.y_train_clean)
    assert np.array_equal(split.X_val[:, 0, 0].astype(int), split.y_val)
    assert np.array_equal(split.X_test[:, 0, 0].astype(int), split.y_test)
    assert split.n_corrupted == 30
    assert split.X_train.max() > 1.0  # normalize=False keeps 0..255


def test_idx_split_normalized_and_flat(fake_root):
    split = hyperclean_split("fashion-mnist", 100, 100, 100, noise=1.0, seed=0, root=fake_root)
    assert split.X_train.shape == (100, 784) and split.X_test.shape == (100, 784)
    assert 0.0 <= split.X_train.min() and split.X_train.max() <= 1.0
    assert split.corrupted.all() and np.all(split.y_train != split.y_train_clean)
    with pytest.raises(ValueError, match="maximum 300"):
        hyperclean_split("mnist", 200, 101, 10, root=fake_root)
    with pytest.raises(ValueError, match="maximum 100"):
        hyperclean_split("mnist", 10, 10, 101, root=fake_root)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="cifar10"), "name must be one of fashion-mnist, mnist, digits"),
        (dict(noise=1.5), r"noise must be a real number in \[0, 1\]"),
        (dict(noise=-0.1), r"noise must be a real number in \[0, 1\]"),
        (dict(noise=float("nan")), r"noise must be a real number in \[0, 1\]"),
        (dict(train_size=0), "train_size must be an integer >= 1"),
        (dict(val_size=2.5), "val_size must be an integer >= 1"),
        (dict(test_size=True), "test_size must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer >= 0"),
    ],
)
def test_argument_validation(kwargs, message):
    args = dict(name="digits", train_size=10, val_size=10, test_size=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        hyperclean_split(**args)


def test_as_tensors():
    import torch

    tensors = hyperclean_split("digits", 20, 10, 10, noise=0.5, seed=0).as_tensors()
    assert tensors["X_train"].dtype == torch.float32 and tensors["y_train"].dtype == torch.int64
    assert tensors["corrupted"].dtype == torch.bool and tensors["X_val"].shape == (10, 64)


@requires_fashion
def test_real_fashion_mnist_paper_setting(monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA", raising=False)
    split = hyperclean_split("fashion-mnist", 5000, 5000, 10000, noise=0.5, seed=0, root=FASHION_DIR)
    assert split.X_train.shape == (5000, 784) and split.X_test.shape == (10000, 784)
    assert split.n_corrupted == 2500
    assert np.all(split.y_train[split.corrupted] != split.y_train_clean[split.corrupted])
    assert np.array_equal(np.bincount(split.y_test), np.full(10, 1000))  # all of the test split
