"""Few-shot data: area resize, rotations, rotated Fashion-MNIST split, Omniglot and image-folder loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bilevel.app.data import (
    DEFAULT_META_TRAIN_CLASSES,
    DatasetNotFoundError,
    EpisodeSampler,
    add_rotations,
    load_fashion_mnist,
    load_image_folder,
    load_omniglot,
    meta_split_classes,
    resize_area,
    rotated_fashion_mnist,
)
from bilevel.app.data import images as images_module

from data_testutils import FASHION_DIR, requires_fashion


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 grey (H, W) or RGB (H, W, 3) PNG with matplotlib (no Pillow needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2:
        plt.imsave(path, array, cmap="gray", vmin=0, vmax=255)
    else:
        plt.imsave(path, array)


@pytest.fixture(params=["pil", "numpy"])
def backend(request, monkeypatch):
    """Run a test with Pillow (when installed) and with the matplotlib/numpy fallback."""
    if request.param == "pil":
        pytest.importorskip("PIL")
    else:
        monkeypatch.setattr(images_module, "USE_PIL", False)
    return request.param


# ---------------------------------------------------------------- resize and rotations

def test_resize_area_exact_values():
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.testing.assert_allclose(resize_area(x, 2), [[2.5, 4.5], [10.5, 12.5]])  # 2x2 block means
    np.testing.assert_allclose(resize_area(x, (4, 4)), x)
    up = resize_area(np.array([[1.0, 3.0]]), (2, 4))
    np.testing.assert_allclose(up, [[1, 1, 3, 3], [1, 1, 3, 3]])
    # 3 -> 2: each output cell averages 1.5 input cells
    np.testing.assert_allclose(resize_area(np.array([[0.0, 3.0, 6.0]]), (1, 2)), [[1.0, 5.0]])


def test_resize_area_batches_and_keeps_integer_dtype():
    batch = np.full((5, 28, 28), 200, dtype=np.uint8)
    out = resize_area(batch, 14)
    assert out.shape == (5, 14, 14) and out.dtype == np.uint8 and np.all(out == 200)
    with pytest.raises(ValueError, match="image_size must be"):
        resize_area(batch, (0, 3))


def test_add_rotations_labels_and_pixels():
    img = np.arange(9, dtype=np.uint8).reshape(1, 3, 3)
    data = add_rotations(np.concatenate([img, img + 10]), np.array([0, 2]), {0: "a", 2: "b"})
    assert data.images.shape == (8, 3, 3)
    np.testing.assert_array_equal(data.labels, [0, 8, 1, 9, 2, 10, 3, 11])
    for r in range(4):
        np.testing.assert_array_equal(data.images[2 * r], np.rot90(img[0], r))
    assert data.class_names[9] == "b@90" and data.class_names[3] == "a@270"
    with pytest.raises(ValueError, match="square"):
        add_rotations(np.zeros((1, 2, 3)), np.array([0]))


# ---------------------------------------------------------------- rotated Fashion-MNIST

def test_meta_split_classes():
    assert DEFAULT_META_TRAIN_CLASSES == (0, 1, 2, 3, 4, 5)
    assert meta_split_classes("train") == (0, 1, 2, 3, 4, 5)
    assert meta_split_classes("test") == (6, 7, 8, 9)
    assert meta_split_classes("test", [9, 1]) == (0, 2, 3, 4, 5, 6, 7, 8)
    for bad in ([], list(range(10)), [10], [1.5]):
        with pytest.raises(ValueError, match="meta_train_classes"):
            meta_split_classes("train", bad)
    with pytest.raises(ValueError, match="split must be one of"):
        meta_split_classes("val")


def test_rotated_split_on_fake_data(fake_root):
    train = rotated_fashion_mnist(root=fake_root, split="train")
    test = rotated_fashion_mnist(root=fake_root, split="test")
    train_classes, test_classes = set(train.labels.tolist()), set(test.labels.tolist())
    assert train_classes == set(range(24)) and test_classes == set(range(24, 40))
    assert not train_classes & test_classes
    # no rotation of a meta-test original class appears in meta-train
    assert {c // 4 for c in train_classes} == {0, 1, 2, 3, 4, 5}
    assert {c // 4 for c in test_classes} == {6, 7, 8, 9}
    assert set(train.class_names) == train_classes and test.class_names[25] == "Shirt@90"
    # 400 fake images (300 train + 100 test official) with 40 per class: 6 classes x 40 x 4 rotations
    assert train.images.shape == (960, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (640, 28, 28)
    # each image is the rotation its label says: undo it and the label pixel (top-left) matches
    for i in range(0, len(train.labels), 97):
        c, r = divmod(int(train.labels[i]), 4)
        assert np.rot90(train.images[i], -r)[0, 0] == c


def test_rotated_split_options(fake_root):
    data = rotated_fashion_mnist(root=fake_root, split="test", meta_train_classes=range(8),
                                 image_size=14, max_per_class=5, seed=3)
    assert data.images.shape == (2 * 5 * 4, 14, 14)
    assert set(data.labels.tolist()) == set(range(32, 40))
    again = rotated_fashion_mnist(root=fake_root, split="test", meta_train_classes=range(8),
                                  image_size=14, max_per_class=5, seed=3)
    np.testing.assert_array_equal(data.images, again.images)
    with pytest.raises(ValueError, match="max_per_class"):
        rotated_fashion_mnist(root=fake_root, max_per_class=0)
    with pytest.raises(ValueError, match="square"):
        rotated_fashion_mnist(root=fake_root, image_size=(14, 28))


def test_rotated_episodes(fake_root):
    data = rotated_fashion_mnist(root=fake_root, split="train")
    ep = EpisodeSampler(data.images, data.labels, ways=5, shots=1, queries=5, seed=0).sample(2)
    assert ep.support_x.shape == (2, 5, 28, 28) and ep.query_x.shape == (2, 25, 28, 28)
    assert ep.classes.max() < 24


@requires_fashion
def test_real_rotated_fashion_mnist(monkeypatch):
    monkeypatch.delenv("BILEVEL_DATA", raising=False)
    train = rotated_fashion_mnist(root=FASHION_DIR, split="train", max_per_class=100)
    test = rotated_fashion_mnist(root=FASHION_DIR, split="test", max_per_class=100)
    assert np.array_equal(np.bincount(train.labels), np.full(24, 100))
    assert np.array_equal(np.unique(test.labels), np.arange(24, 40))
    assert train.images.shape == (2400, 28, 28) and test.images.shape == (1600, 28, 28)
    # every rotated image, rotated back, is an original image of the class its label encodes
    parts = [load_fashion_mnist(s, root=FASHION_DIR) for s in ("train", "test")]
    label_of = {img.tobytes(): int(lab) for imgs, labs in parts for img, lab in zip(imgs, labs)}
    for data in (train, test):
        for img, label in zip(data.images[::7], data.labels[::7]):
            original, rotation = divmod(int(label), 4)
            assert label_of[np.ascontiguousarray(np.rot90(img, -rotation)).tobytes()] == original


# ---------------------------------------------------------------- Omniglot layout

def make_omniglot(root: Path, split: str, alphabets: dict[str, int], per_char: int = 3) -> None:
    rng = np.random.default_rng(0)
    for alphabet, n_chars in alphabets.items():
        for c in range(1, n_chars + 1):
            for k in range(per_char):
                img = np.full((105, 105), 255, dtype=np.uint8)  # white background
                img[rng.integers(0, 105, 40), rng.integers(0, 105, 40)] = 0  # black strokes
                img[10:40, 10:20] = 0  # a stroke in the top-left
                save_png(root / f"images_{split}" / alphabet / f"character{c:02d}" / f"{c:04d}_{k:02d}.png", img)


def test_omniglot_with_rotations(tmp_path, backend):
    make_omniglot(tmp_path, "background", {"Alpha": 2, "Beta": 3})
    data = load_omniglot(tmp_path, "background", image_size=28, rotations=True)
    assert data.images.shape == (5 * 3 * 4, 28, 28) and data.images.dtype == np.uint8
    assert np.array_equal(np.unique(data.labels), np.arange(20))
    assert np.array_equal(np.bincount(data.labels), np.full(20, 3))
    assert data.class_names[0] == "Alpha/character01@0" and data.class_names[4 * 4 + 3] == "Beta/character03@270"
    base = data.images[data.labels == 0]
    assert base.mean() < 128  # inverted: background dark, strokes bright
    assert base[:, 4, 3].min() > 200  # the top-left stroke
    rot90 = data.images[data.labels == 1]
    np.testing.assert_array_equal(rot90, np.rot90(base, 1, axes=(1, 2)))


def test_omniglot_without_rotations_other_size_and_layouts(tmp_path, backend):
    make_omniglot(tmp_path / "omniglot-py", "evaluation", {"Gamma": 2}, per_char=2)
    data = load_omniglot(tmp_path, "evaluation", image_size=20, rotations=False, invert=False)
    assert data.images.shape == (4, 20, 20)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    assert data.class_names == {0: "Gamma/character01", 1: "Gamma/character02"}
    assert data.images.mean() > 128  # not inverted: white background
    direct = load_omniglot(tmp_path / "omniglot-py" / "images_evaluation", "evaluation", rotations=False)
    assert direct.images.shape == (4, 28, 28)


def test_omniglot_missing_split(tmp_path):
    make_omniglot(tmp_path, "background", {"Alpha": 1}, per_char=1)
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(tmp_path, "evaluation")
    assert str(tmp_path / "images_evaluation") in str(info.value)
    assert "images_evaluation.zip" in str(info.value)
    with pytest.raises(ValueError, match="split must be one of"):
        load_omniglot(tmp_path, "train")


# ---------------------------------------------------------------- generic image folders

def test_image_folder(tmp_path, backend):
    for name, value, count in (("cats", 50, 2), ("dogs", 150, 3), ("zebras", 250, 1)):
        for k in range(count):
            save_png(tmp_path / "tree" / name / f"{k}.png", np.full((6, 8), value, dtype=np.uint8))
    (tmp_path / "tree" / "empty").mkdir()
    (tmp_path / "tree" / "dogs" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path / "tree")
    assert data.images.shape == (6, 6, 8) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 1, 2])
    assert data.class_names == {0: "cats", 1: "dogs", 2: "zebras"}
    np.testing.assert_array_equal(data.images[:, 0, 0], [50, 50, 150, 150, 150, 250])
    resized = load_image_folder(tmp_path / "tree", image_size=(3, 4))
    assert resized.images.shape == (6, 3, 4)
    np.testing.assert_array_equal(resized.images[:, 1, 1], [50, 50, 150, 150, 150, 250])


def test_image_folder_colour_and_errors(tmp_path, backend):
    red = np.zeros((5, 5, 3), dtype=np.uint8)
    red[..., 0] = 255
    save_png(tmp_path / "c" / "red" / "a.png", red)
    save_png(tmp_path / "c" / "red" / "b.png", np.zeros((7, 7, 3), dtype=np.uint8))
    colour = load_image_folder(tmp_path / "c", image_size=5, grayscale=False)
    assert colour.images.shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(colour.images[0, 2, 2], [255, 0, 0])
    gray = load_image_folder(tmp_path / "c", image_size=5)
    assert abs(int(gray.images[0, 2, 2]) - 76) <= 1  # ITU-R 601 luma of pure red
    with pytest.raises(ValueError, match="pass image_size"):
        load_image_folder(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "none")
