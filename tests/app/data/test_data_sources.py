"""MNIST / Fashion-MNIST loaders: search order, file-name variants, missing-data errors, real data."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from bilevel.app.data import DatasetNotFoundError, load_fashion_mnist, load_mnist, search_dirs
from bilevel.app.data import sources
from bilevel.app.data.idx import read_idx, write_idx

from data_testutils import FASHION_DIR, requires_fashion, write_fake_dataset


def test_search_order(isolated, monkeypatch):
    env_a, env_b = isolated / "envA", isolated / "envB"
    monkeypatch.setenv("BILEVEL_DATA", f"{env_a}{os.pathsep}{env_b}")
    root = isolated / "root"
    home = isolated / "home"
    assert search_dirs("fashion-mnist", root) == [
        root,
        root / "fashion-mnist",
        env_a / "fashion-mnist",
        env_a,
        env_b / "fashion-mnist",
        env_b,
        home / ".cache" / "bilevel" / "fashion-mnist",
        isolated / "system" / "fashion-mnist",
    ]
    assert search_dirs("mnist") == [env_a / "mnist", env_a, env_b / "mnist", env_b, home / ".cache/bilevel/mnist"]


def test_default_system_dir_for_fashion_is_the_debian_location():
    assert sources.SYSTEM_DIRS["fashion-mnist"] == ("/usr/share/datasets/fashion-mnist",)


def test_loads_from_explicit_root_gz_and_raw(isolated):
    gz = write_fake_dataset(isolated / "gz", n_train=40, n_test=20, gz=True)
    raw = write_fake_dataset(isolated / "raw", n_train=40, n_test=20, gz=False)
    for root in (gz, raw):
        images, labels = load_mnist("train", root=root)
        assert images.shape == (40, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (40,) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, images[:, 0, 0])
        test_images, test_labels = load_fashion_mnist("test", root=root)
        assert test_images.shape == (20, 28, 28) and test_labels.shape == (20,)
    np.testing.assert_array_equal(load_mnist("train", root=gz)[0], load_mnist("train", root=raw)[0])


def test_root_subdirectory_named_after_dataset(isolated):
    write_fake_dataset(isolated / "root" / "mnist", n_train=30, n_test=10)
    assert load_mnist("test", root=isolated / "root")[0].shape == (10, 28, 28)


def test_env_var_and_precedence(isolated, monkeypatch):
    env = isolated / "env"
    write_fake_dataset(env / "fashion-mnist", n_train=30, n_test=10)
    write_fake_dataset(env, n_train=50, n_test=10)
    write_fake_dataset(isolated / "home" / ".cache" / "bilevel" / "fashion-mnist", n_train=70, n_test=10)
    # nothing in env yet: the cache is used
    assert len(load_fashion_mnist("train")[1]) == 70
    monkeypatch.setenv("BILEVEL_DATA", str(env))
    assert len(load_fashion_mnist("train")[1]) == 30  # $BILEVEL_DATA/<name>/ before $BILEVEL_DATA/
    shutil.rmtree(env / "fashion-mnist")
    assert len(load_fashion_mnist("train")[1]) == 50
    root = write_fake_dataset(isolated / "root", n_train=90, n_test=10)
    assert len(load_fashion_mnist("train", root=root)[1]) == 90  # explicit root wins


def test_system_dir_is_last_resort(isolated):
    write_fake_dataset(isolated / "system" / "fashion-mnist", n_train=20, n_test=10)
    assert len(load_fashion_mnist("train")[1]) == 20
    with pytest.raises(DatasetNotFoundError):
        load_mnist("train")  # the fashion system directory is not searched for mnist


def test_dotted_file_names_are_accepted(isolated):
    root = isolated / "dotted"
    root.mkdir()
    images = np.full((3, 28, 28), 7, dtype=np.uint8)
    write_idx(root / "t10k-images.idx3-ubyte", images)
    write_idx(root / "t10k-labels.idx1-ubyte", np.array([1, 2, 3], dtype=np.uint8))
    got_images, got_labels = load_mnist("test", root=root)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, [1, 2, 3])


def test_missing_data_error_lists_every_directory_and_remedies(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("BILEVEL_DATA", str(env))
    root = isolated / "root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", root=root)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    message = str(err)
    expected_dirs = [root, root / "fashion-mnist", env / "fashion-mnist", env,
                     isolated / "home/.cache/bilevel/fashion-mnist", isolated / "system/fashion-mnist"]
    assert err.searched == expected_dirs
    for directory in expected_dirs:
        assert f"  - {directory}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "bilevel data download fashion-mnist" in message
    assert "BILEVEL_DATA" in message
    assert "train-images-idx3-ubyte" in message

    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test")
    assert "bilevel data download mnist" in str(info.value)
    assert "apt-get" not in str(info.value)  # there is no Debian package for MNIST


def test_half_present_split_is_not_accepted(isolated):
    root = isolated / "half"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist("train", root=root)


def test_error_survives_pickling(isolated):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist()
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value) and clone.searched == info.value.searched


def test_bad_arguments_and_bad_content(isolated):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="unknown IDX dataset"):
        sources.load_idx_dataset("cifar10")
    root = isolated / "bad"
    root.mkdir()
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), dtype=np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_mnist("test", root=root)
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="expected 2 labels"):
        load_mnist("test", root=root)


@requires_fashion
def test_real_fashion_mnist_sizes_and_shapes(monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA", raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split, root=FASHION_DIR)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels), np.full(10, n // 10))
        assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(labels, read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz"))
