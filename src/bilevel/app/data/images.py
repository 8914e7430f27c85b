"""Image-folder loaders for few-shot learning: generic class-per-folder trees and Omniglot.

Images are read with Pillow when it is importable (any format it knows) and
otherwise with :func:`matplotlib.image.imread` (PNG only).  Resizing uses
Pillow's Lanczos filter, or an exact area-averaging resize in numpy
(:func:`resize_area`) without Pillow.  All loaders return ``uint8`` pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from bilevel.app.data.idx import PathLike
from bilevel.app.data.sources import DatasetNotFoundError

#: File extensions picked up by :func:`load_image_folder`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: Set to False to force the matplotlib/numpy fallback even when Pillow is installed.
USE_PIL = True
ROTATION_DEGREES: tuple[int, ...] = (0, 90, 180, 270)

Size = Union[int, tuple[int, int]]


class FewShotData(NamedTuple):
    """Images with class labels, as returned by the few-shot loaders.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8`` array ``(N, H, W)`` (or ``(N, H, W, 3)`` for colour folders).
    labels : numpy.ndarray
        ``int64`` array ``(N,)`` of class ids.
    class_names : dict of int to str
        Name of every class id that occurs in ``labels``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: dict[int, str]


def _pil():
    """Return the ``PIL.Image`` module, or None when unavailable or disabled."""
    if not USE_PIL:
        return None
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _as_hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise ValueError(f"image_size must be an int or a (height, width) pair, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {size!r}")
    return h, w


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Weights ``(n_out, n_in)``: overlap of each input cell with each output cell, rows sum to 1."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    hi = lo + scale
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / scale


def resize_area(images: np.ndarray, size: Size) -> np.ndarray:
    """Resize the last two axes by exact area averaging (box filter), in numpy.

    Parameters
    ----------
    images : numpy.ndarray
        Array ``(..., H, W)``; e.g. one image ``(H, W)`` or a batch ``(N, H, W)``.
    size : int or (int, int)
        Output ``(height, width)``; an int means a square.

    Returns
    -------
    numpy.ndarray
        Array ``(..., h, w)`` of the input dtype (integers are rounded and clipped).
    """
    h, w = _as_hw(size)
    images = np.asarray(images)
    if images.shape[-2:] == (h, w):
        return images.copy()
    rows, cols = _area_matrix(images.shape[-2], h), _area_matrix(images.shape[-1], w)
    out = np.einsum("ih,...hw,jw->...ij", rows, images.astype(np.float64), cols)
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(images.dtype)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def read_image(path: PathLike, grayscale: bool = True, image_size: Optional[Size] = None) -> np.ndarray:
    """Read one image file as ``uint8``.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (PNG always; other formats need Pillow).
    grayscale : bool
        Return ``(H, W)`` luminance instead of ``(H, W, 3)`` RGB.
    image_size : int or (int, int), optional
        Resize to this ``(height, width)``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array ``(H, W)`` or ``(H, W, 3)``.
    """
    path = Path(path)
    Image = _pil()
    if Image is not None:
        with Image.open(path) as img:
            img = img.convert("L" if grayscale else "RGB")
            if image_size is not None:
                h, w = _as_hw(image_size)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8).copy()
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: reading {path.suffix} files needs Pillow (only PNG works without it)")
    import matplotlib.image

    array = np.asarray(matplotlib.image.imread(path))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    array = _to_uint8(array[..., :3])  # drop alpha
    if grayscale:
        luma = array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        array = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if image_size is not None:
        if grayscale:
            array = resize_area(array, image_size)
        else:
            array = np.moveaxis(resize_area(np.moveaxis(array, -1, 0), image_size), 0, -1)
    return array


def add_rotations(
    images: np.ndarray, labels: np.ndarray, class_names: Optional[dict[int, str]] = None
) -> FewShotData:
    """Turn every class into four classes rotated by 0, 90, 180 and 270 degrees.

    The image rotated by ``90 * r`` degrees (counter-clockwise) of class ``c``
    gets class id ``4 * c + r``.

    Parameters
    ----------
    images : numpy.ndarray
        Square images ``(N, S, S)``.
    labels : numpy.ndarray
        Integer labels ``(N,)``.
    class_names : dict of int to str, optional
        Names of the original classes; rotated names get a ``@<degrees>`` suffix.

    Returns
    -------
    FewShotData
        ``4 N`` images, the four rotation blocks one after another.
    """
    if images.ndim < 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"rotations need square images (N, S, S), got shape {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    rotated = np.concatenate([np.rot90(images, r, axes=(1, 2)) for r in range(4)])
    new_labels = np.concatenate([labels * 4 + r for r in range(4)])
    names = class_names or {int(c): str(int(c)) for c in np.unique(labels)}
    new_names = {4 * c + r: f"{name}@{deg}" for c, name in names.items() for r, deg in enumerate(ROTATION_DEGREES)}
    return FewShotData(np.ascontiguousarray(rotated), new_labels, new_names)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _stack(arrays: list[np.ndarray], files: list[Path]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(f for a, f in zip(arrays, files) if a.shape != first)
        raise ValueError(
            f"images have different sizes ({files[0]}: {first}, {odd}: {arrays[files.index(odd)].shape}); "
            "pass image_size=... to resize them"
        )
    return np.stack(arrays)


def load_image_folder(
    root: PathLike,
    image_size: Optional[Size] = None,
    grayscale: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> FewShotData:
    """Load a tree ``root/<class>/<image>`` with one sub-directory per class.

    Parameters
    ----------
    root : str or os.PathLike
        Directory whose sub-directories (sorted by name) are the classes;
        sub-directories without images are skipped.
    image_size : int or (int, int), optional
        Resize every image; if None all images must already have the same size.
    grayscale : bool
        Load luminance ``(H, W)`` instead of RGB ``(H, W, 3)``.
    extensions : sequence of str
        File suffixes treated as images.

    Returns
    -------
    FewShotData
        ``uint8`` images, labels ``0..C-1`` in sorted folder order, and the
        folder name of each label.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a directory.
    ValueError
        If no images are found or sizes differ without ``image_size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    arrays, labels, files, names = [], [], [], {}
    for folder in _subdirs(root):
        paths = _image_files(folder, extensions)
        if not paths:
            continue
        label = len(names)
        names[label] = folder.name
        for path in paths:
            arrays.append(read_image(path, grayscale, image_size))
            labels.append(label)
            files.append(path)
    if not arrays:
        raise ValueError(f"no images ({', '.join(extensions)}) found in class sub-directories of {root}")
    return FewShotData(_stack(arrays, files), np.asarray(labels, dtype=np.int64), names)


OMNIGLOT_SPLITS = ("background", "evaluation")


def load_omniglot(
    root: PathLike,
    split: str = "background",
    image_size: Size = 28,
    rotations: bool = True,
    invert: bool = True,
) -> FewShotData:
    """Load Omniglot from the layout of the official archives.

    Expects ``root/images_<split>/<Alphabet>/<characterNN>/*.png`` (also
    accepted: ``root/omniglot-py/images_<split>/...`` or ``root`` itself being
    ``images_<split>``).  Each character of each alphabet is a class.

    Parameters
    ----------
    root : str or os.PathLike
        Directory holding the unpacked ``images_background`` / ``images_evaluation``.
    split : {"background", "evaluation"}
        ``"background"`` (30 alphabets, 964 characters, for meta-training) or
        ``"evaluation"`` (20 alphabets, 659 characters, for meta-testing).
    image_size : int or (int, int)
        Output size (default 28x28 from the original 105x105).
    rotations : bool
        Add the 90/180/270-degree rotations as extra classes: character ``c``
        rotated by ``90 r`` degrees gets class id ``4 c + r``.
    invert : bool
        Make strokes bright on a dark background (the files are black on white).

    Returns
    -------
    FewShotData
        ``uint8`` images ``(N, h, w)``, labels and names ``"Alphabet/characterNN[@deg]"``.

    Raises
    ------
    DatasetNotFoundError
        If the split directory is missing.
    ValueError
        For a bad ``split`` or an empty tree.
    """
    if split not in OMNIGLOT_SPLITS:
        raise ValueError(f"split must be one of {OMNIGLOT_SPLITS}, got {split!r}")
    root = Path(root).expanduser()
    folder = f"images_{split}"
    candidates = [root / folder, root / "omniglot-py" / folder, root]
    found = next((c for c in candidates if c.is_dir() and (c.name == folder)), None)
    if found is None:
        raise DatasetNotFoundError(
            "Omniglot",
            candidates[:2],
            detail=f"no {folder}/ directory",
            hints=[
                f"download {folder}.zip from the Omniglot repository (github.com/brendenlake/omniglot, "
                f"directory python/) and unzip it into {root}",
                "offline, use bilevel.app.data.rotated_fashion_mnist() as a stand-in",
            ],
        )
    arrays, labels, files, names = [], [], [], {}
    for alphabet in _subdirs(found):
        for character in _subdirs(alphabet):
            paths = _image_files(character, (".png",))
            if not paths:
                continue
            label = len(names)
            names[label] = f"{alphabet.name}/{character.name}"
            for path in paths:
                arrays.append(read_image(path, grayscale=True, image_size=image_size))
                labels.append(label)
                files.append(path)
    if not arrays:
        raise ValueError(f"no PNG images found under {found}/<Alphabet>/<character>/")
    images = _stack(arrays, files)
    if invert:
        images = 255 - images
    data = FewShotData(images, np.asarray(labels, dtype=np.int64), names)
    return add_rotations(*data) if rotations else data
