"""Downloading the official MNIST / Fashion-MNIST IDX files (standard library only).

Every official file has a pinned SHA-256 (:data:`OFFICIAL_FILES`). A download

* tries the mirrors of :data:`MIRRORS` in order (https first; Fashion-MNIST's own
  bucket, named in its README, is http-only and is the last resort: the pinned
  hash is what makes any mirror trustworthy, not the transport);
* streams each file into a hidden temporary file inside the destination
  directory, refusing a ``Content-Length`` or a body larger than a per-file cap
  (:func:`max_download_bytes`) and stopping at an overall deadline
  (``max_time`` seconds for the whole :func:`download` call, checked between
  reads; every single read is also bounded by the remaining time);
* checks the SHA-256, then decompresses in a streaming way with a hard cap on
  the output (:func:`max_idx_bytes`, the exact size of the official IDX file of
  that name), so a gzip bomb is refused after reading at most that many bytes;
* checks the IDX header and shape, and only then renames the file to its final
  name, so a refused or interrupted download never leaves a file under an
  official name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from bilevel.app.data.idx import PathLike, read_idx
from bilevel.app.data.sources import SPLIT_FILES, SPLIT_SIZES, cache_dir, dataset_info, how_to_get

#: The Fashion-MNIST authors' repository at a pinned commit (https; the files are stored in git there).
FASHION_MNIST_BASE_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
    "b2617bb6d3ffa2e429640350f613e3291e10b141/data/fashion/"
)
#: The https (REST) endpoint of the Zalando Research S3 bucket.
FASHION_MNIST_S3_URL = "https://fashion-mnist.s3.eu-central-1.amazonaws.com/"
#: The URL given in the Fashion-MNIST README: an S3 *website* endpoint, http only (tried last).
FASHION_MNIST_README_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: A widely used MNIST mirror (the original yann.lecun.com site often refuses scripted downloads).
MNIST_BASE_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
#: The MNIST mirror used by torchvision.
MNIST_OSSCI_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: Mirrors tried in order, per dataset.
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (FASHION_MNIST_BASE_URL, FASHION_MNIST_S3_URL, FASHION_MNIST_README_URL),
    "mnist": (MNIST_BASE_URL, MNIST_OSSCI_URL),
}
#: First mirror per dataset.
DEFAULT_BASE_URLS: dict[str, str] = {name: urls[0] for name, urls in MIRRORS.items()}

#: Default overall time limit of one :func:`download` call, in seconds (about 35 KB/s for Fashion-MNIST).
DEFAULT_MAX_TIME = 900.0

_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class OfficialFile:
    """A pinned official file.

    Attributes
    ----------
    name : str
        File name, e.g. ``"train-images-idx3-ubyte.gz"``.
    size : int
        Size of the gzip file in bytes.
    sha256 : str
        SHA-256 of the gzip file (hex); verified after every download.
    md5 : str
        MD5 published with the data set (Fashion-MNIST README, torchvision's MNIST
        resources); kept for cross-checking by hand, not verified.
    """

    name: str
    size: int
    sha256: str
    md5: str


# Sources of the pinned values (see docs/data.md): SHA-256 and sizes from TensorFlow Datasets'
# url_checksums/fashion_mnist.txt and url_checksums/mnist.txt, the same values as Keras and several other
# projects; MD5 from the Fashion-MNIST README and torchvision's MNIST.resources. For the two Fashion-MNIST label
# files the SHA-256, MD5 and size were also computed from the blobs in zalandoresearch/fashion-mnist at the
# pinned commit.
OFFICIAL_FILES: dict[str, dict[str, OfficialFile]] = {
    "fashion-mnist": {
        f.name: f
        for f in (
            OfficialFile("train-images-idx3-ubyte.gz", 26421880,
                         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                         "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            OfficialFile("train-labels-idx1-ubyte.gz", 29515,
                         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                         "25c81989df183df01b3e8a0aad5dffbe"),
            OfficialFile("t10k-images-idx3-ubyte.gz", 4422102,
                         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                         "bef4ecab320f06d8554ea6380940ec79"),
            OfficialFile("t10k-labels-idx1-ubyte.gz", 5148,
                         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                         "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    },
    "mnist": {
        f.name: f
        for f in (
            OfficialFile("train-images-idx3-ubyte.gz", 9912422,
                         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                         "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            OfficialFile("train-labels-idx1-ubyte.gz", 28881,
                         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                         "d53e105ee54ea40749a09fcbcd1e9432"),
            OfficialFile("t10k-images-idx3-ubyte.gz", 1648877,
                         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                         "9fb629c4189551a2d022fa330f9573f3"),
            OfficialFile("t10k-labels-idx1-ubyte.gz", 4542,
                         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                         "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    },
}


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


def max_idx_bytes(filename: str) -> int:
    """Size in bytes of the uncompressed official IDX file ``filename``: the cap on decompressed output.

    Parameters
    ----------
    filename : str
        An official name (with or without ``.gz``).

    Returns
    -------
    int
        Header (4 + 4 per dimension) plus one byte per value, e.g. 47040016 for the training images.
    """
    shape = _expected_shape(filename)
    count = 1
    for d in shape:
        count *= d
    return 4 + 4 * len(shape) + count


def max_download_bytes(filename: str, official: Optional[OfficialFile] = None) -> int:
    """Largest body accepted for ``filename``: a bit above its real size.

    Parameters
    ----------
    filename : str
        An official name.
    official : OfficialFile, optional
        The pinned file: the cap is its size plus 1 % and 1 KiB. Without it (a
        caller-supplied hash table) the cap is the uncompressed IDX size plus 1 %
        and 1 KiB, which gzip can never exceed.

    Returns
    -------
    int
    """
    size = official.size if official is not None else max_idx_bytes(filename)
    return size + size // 100 + 1024


def sha256_file(path: PathLike) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_decompressed_size(path: PathLike, limit: int, source: str = "") -> int:
    """Decompress ``path`` (if gzip, all members) in a streaming way and refuse more than ``limit`` bytes.

    At most about ``limit`` bytes of output are ever produced, 64 KiB at a time,
    so memory stays bounded whatever the compression ratio.

    Parameters
    ----------
    path : str or os.PathLike
    limit : int
        Largest accepted uncompressed size in bytes.
    source : str, optional
        Name used in the error message (default: ``path``).

    Returns
    -------
    int
        The uncompressed size.

    Raises
    ------
    DownloadError
        If the content decompresses to more than ``limit`` bytes, or the gzip stream is corrupt.
    """
    source = source or str(path)
    total = 0
    with open(path, "rb") as fh:
        if fh.read(2) != _GZIP_MAGIC:
            total = os.fstat(fh.fileno()).st_size
        else:
            fh.seek(0)
            decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = b""
            while True:
                if not pending:
                    pending = fh.read(_CHUNK)
                    if not pending:
                        break
                try:
                    out = decomp.decompress(pending, min(_CHUNK, limit + 1 - total))
                except zlib.error as exc:
                    raise DownloadError(f"{source}: corrupt gzip stream ({exc})") from exc
                total += len(out)
                if total > limit:
                    break
                if decomp.eof:  # end of a gzip member: another may follow
                    pending = decomp.unused_data.lstrip(b"\0")
                    decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:
                    pending = decomp.unconsumed_tail
    if total > limit:
        raise DownloadError(
            f"{source}: decompresses to more than {limit} bytes, the size of the official IDX file "
            "(refused: possibly a decompression bomb)"
        )
    return total


def _set_read_timeout(response, seconds: float) -> None:
    """Bound the next socket operation of an urllib response (best effort; http.client internals)."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass


def _fetch(url: str, target: Path, *, timeout: float, deadline: float, max_time: float, max_bytes: int) -> None:
    """Stream ``url`` into ``target``; raise :class:`DownloadError` on any failure, cap or deadline."""

    def late() -> DownloadError:
        return DownloadError(f"cannot download {url}: overall time limit of {max_time:g} s exceeded")

    received = 0
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise late()
        with urllib.request.urlopen(url, timeout=min(timeout, remaining)) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            declared = int(length) if length is not None and length.strip().isdigit() else None
            if declared is not None and declared > max_bytes:
                raise DownloadError(
                    f"cannot download {url}: Content-Length {declared} bytes exceeds the limit of {max_bytes} bytes"
                )
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise late()
                _set_read_timeout(response, min(timeout, remaining))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadError(f"cannot download {url}: more than the limit of {max_bytes} bytes sent")
                out.write(chunk)
            if declared is not None and received != declared:
                raise DownloadError(f"cannot download {url}: connection closed after {received} of {declared} bytes")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)) and time.monotonic() >= deadline - 0.05:
            raise late() from exc
        raise DownloadError(f"cannot download {url}: {exc.reason} (no network, or the host is unreachable)") from exc
    except (socket.timeout, TimeoutError) as exc:
        if time.monotonic() >= deadline - 0.05:  # the read was bounded by the time left
            raise late() from exc
        raise DownloadError(f"cannot download {url}: timed out after {timeout:g} s without data") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot download {url}: {exc or type(exc).__name__}") from exc


def _validate(path: Path, filename: str, source: str, sha256: str, max_bytes: int, check_shape: bool) -> None:
    """Size cap, SHA-256, bounded decompression, IDX shape: raise :class:`DownloadError` at the first failure."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DownloadError(f"{source}: {size} bytes, more than the limit of {max_bytes} bytes for {filename}")
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise DownloadError(
            f"{source}: SHA-256 mismatch for {filename}: expected {sha256.lower()}, got {actual} "
            "(file refused and deleted)"
        )
    check_decompressed_size(path, max_idx_bytes(filename), source)
    try:
        array = read_idx(path)
    except ValueError as exc:
        raise DownloadError(f"{source} is not a valid IDX file: {exc}") from exc
    expected = _expected_shape(filename)
    ok = array.ndim == len(expected) and array.shape[1:] == expected[1:]
    if check_shape:
        ok = ok and array.shape == expected
    if not ok:
        raise DownloadError(f"{source}: expected an array of shape {expected}, got {array.shape}")


def read_sha256sums(path: PathLike) -> dict[str, str]:
    """Read a ``sha256sum``-style file (``HEX  NAME`` per line; ``#`` comments and blank lines ignored).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        File name (without directories) -> lower-case hex digest.

    Raises
    ------
    ValueError
        On a line that is not a 64-digit hex digest followed by a name.
    """
    table: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}:{number}: expected 'SHA256HEX  NAME', got {line!r}")
        table[Path(parts[1].lstrip("*").strip()).name] = digest
    return table


def download(
    name: str,
    dest: Optional[PathLike] = None,
    base_url: Optional[str] = None,
    timeout: float = 30,
    force: bool = False,
    *,
    mirrors: Optional[Sequence[str]] = None,
    sha256: Optional[Mapping[str, str]] = None,
    max_time: float = DEFAULT_MAX_TIME,
) -> Path:
    """Download the four official IDX files of a dataset and verify them.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    dest : str or os.PathLike, optional
        Target directory, created if needed; defaults to ``~/.cache/bilevel/<name>/``,
        which the loaders search automatically.
    base_url : str, optional
        A single URL prefix the file names are appended to (instead of :data:`MIRRORS`).
    timeout : float, optional
        Socket timeout in seconds for each connection and read.
    force : bool, optional
        Re-download files that already exist and pass the checks.
    mirrors : sequence of str, optional
        URL prefixes tried in order for each file (default: ``MIRRORS[name]``);
        not together with ``base_url``.
    sha256 : mapping, optional
        File name -> expected SHA-256 (hex) for all four files, replacing the pinned
        official hashes (for a private mirror of other data, and the tests). With
        it, files of any sample count are accepted; without it, the official
        hashes and shapes are enforced.
    max_time : float, optional
        Overall time limit in seconds for the whole call (all files and mirrors).

    Returns
    -------
    pathlib.Path
        The destination directory.

    Raises
    ------
    DownloadError
        If a file cannot be fetched from any mirror, is too large (compressed or
        decompressed), has the wrong SHA-256, is not a valid IDX file of the
        expected shape, or the time limit is reached. A refused file is deleted.
    ValueError
        For an unknown dataset name, both ``base_url`` and ``mirrors``, or a
        ``sha256`` table that misses a file.
    """
    info = dataset_info(name)
    if base_url is not None and mirrors is not None:
        raise ValueError("give base_url or mirrors, not both")
    urls = [base_url] if base_url is not None else list(mirrors if mirrors is not None else MIRRORS[info.name])
    if not urls:
        raise ValueError("mirrors must name at least one URL prefix")
    urls = [u if u.endswith("/") else u + "/" for u in urls]
    files = official_files(info.name)
    official = OFFICIAL_FILES[info.name] if sha256 is None else {}
    if sha256 is not None:
        missing = [f for f in files if f not in sha256]
        if missing:
            raise ValueError(f"sha256 table has no entry for {', '.join(missing)}")
    deadline = time.monotonic() + max_time
    dest = Path(dest).expanduser() if dest is not None else cache_dir(info.name)
    dest.mkdir(parents=True, exist_ok=True)
    for filename in files:
        pinned = official.get(filename)
        expected = pinned.sha256 if pinned is not None else str(sha256[filename])  # type: ignore[index]
        max_bytes = max_download_bytes(filename, pinned)
        final = dest / filename
        if final.is_file() and not force:
            try:
                _validate(final, filename, str(final), expected, max_bytes, pinned is not None)
                continue
            except DownloadError:
                pass  # damaged or different copy: fetch it again
        errors: list[str] = []
        done = False
        for base in urls:
            url = base + filename
            fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _fetch(url, tmp, timeout=timeout, deadline=deadline, max_time=max_time, max_bytes=max_bytes)
                _validate(tmp, filename, url, expected, max_bytes, pinned is not None)
                os.replace(tmp, final)
                done = True
                break
            except DownloadError as exc:
                errors.append(str(exc))
            finally:
                tmp.unlink(missing_ok=True)
            if time.monotonic() >= deadline:
                break
        if not done:
            message = errors[0] if len(errors) == 1 else (
                f"cannot download {filename} from any mirror:\n" + "\n".join(f"  - {e}" for e in errors))
            hints = "\n".join(f"  - {h}" for h in how_to_get(info.name) if "bilevel data download" not in h)
            raise DownloadError(f"{message}\nOther ways to get {info.title}:\n{hints}")
    return dest
