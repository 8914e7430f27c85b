"""Downloading the official MNIST / Fashion-MNIST IDX files (standard library only).

Files are streamed into a hidden temporary file inside the destination
directory, checked to be valid IDX with the expected shape, and only then
renamed to their final name, so an interrupted download never leaves a
half-written file under an official name.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .idx import PathLike, read_idx
from .sources import SPLIT_FILES, SPLIT_SIZES, cache_dir, dataset_info, how_to_get

#: Base URL given in the Fashion-MNIST README (Zalando Research S3 bucket).
FASHION_MNIST_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: A widely used MNIST mirror (the original yann.lecun.com site often refuses scripted downloads).
MNIST_BASE_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
#: Default base URL per dataset.
DEFAULT_BASE_URLS: dict[str, str] = {
    "fashion-mnist": FASHION_MNIST_BASE_URL,
    "mnist": MNIST_BASE_URL,
}

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """Raised when a dataset file cannot be fetched or is not what was expected."""


def official_files(name: str) -> list[str]:
    """Return the official (gzip) file names of a dataset.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.

    Returns
    -------
    list of str
        The four ``*.gz`` names, images before labels, train before test.
    """
    dataset_info(name)
    return [stem + ".gz" for split in ("train", "test") for stem in SPLIT_FILES[split]]


def _expected_shape(filename: str) -> tuple[int, ...]:
    split = "train" if filename.startswith("train") else "test"
    n = SPLIT_SIZES[split]
    return (n, 28, 28) if "images" in filename else (n,)


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` into ``target``; raise :class:`DownloadError` on any network failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url}: {exc.reason} (no network, or the host is unreachable)") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise DownloadError(f"cannot download {url}: timed out after {timeout} s") from exc
    except OSError as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc


def _verify(path: Path, filename: str, url: str, check_shape: bool) -> None:
    try:
        array = read_idx(path)
    except ValueError as exc:
        raise DownloadError(f"{url} is not a valid IDX file: {exc}") from exc
    expected = _expected_shape(filename)
    ok = array.ndim == len(expected) and array.shape[1:] == expected[1:]
    if check_shape:
        ok = ok and array.shape == expected
    if not ok:
        raise DownloadError(f"{url}: expected an array of shape {expected}, got {array.shape}")


def download(
    name: str,
    dest: Optional[PathLike] = None,
    base_url: Optional[str] = None,
    timeout: float = 30,
    force: bool = False,
) -> Path:
    """Download the four official IDX files of a dataset.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    dest : str or os.PathLike, optional
        Target directory, created if needed; defaults to ``~/.cache/bilevel/<name>/``,
        which the loaders search automatically.
    base_url : str, optional
        URL prefix the file names are appended to; defaults to
        :data:`DEFAULT_BASE_URLS` ``[name]``.
    timeout : float, optional
        Socket timeout in seconds for each request.
    force : bool, optional
        Re-download files that already exist and parse as IDX.

    Returns
    -------
    pathlib.Path
        The destination directory.

    Raises
    ------
    DownloadError
        If a file cannot be fetched, or is not a valid IDX file of the expected
        shape (with the default URLs the exact official sizes are checked).
    ValueError
        For an unknown dataset name.
    """
    info = dataset_info(name)
    dest = Path(dest).expanduser() if dest is not None else cache_dir(info.name)
    check_shape = base_url is None
    base = base_url if base_url is not None else DEFAULT_BASE_URLS[info.name]
    if not base.endswith("/"):
        base += "/"
    dest.mkdir(parents=True, exist_ok=True)
    for filename in official_files(info.name):
        final = dest / filename
        url = base + filename
        if final.is_file() and not force:
            try:
                _verify(final, filename, str(final), check_shape)
                continue
            except DownloadError:
                pass  # damaged copy: fetch it again
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, timeout)
            _verify(tmp, filename, url, check_shape)
            os.replace(tmp, final)
        except DownloadError as exc:
            hints = "\n".join(f"  - {h}" for h in how_to_get(info.name) if "bilevel data download" not in h)
            raise DownloadError(f"{exc}\nOther ways to get {info.title}:\n{hints}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return dest
