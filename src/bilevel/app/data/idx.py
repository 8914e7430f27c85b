"""Reading and writing the IDX format used by MNIST and Fashion-MNIST.

An IDX file starts with a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``,
followed by ``ndim`` big-endian unsigned 32-bit dimension sizes and then the
data in C order, big-endian.  Files are often distributed gzip-compressed;
:func:`read_idx` detects compression from the content (gzip magic bytes), so
the file name does not matter.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CODE_BY_KIND: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()
}
_GZIP_MAGIC = b"\x1f\x8b"


def _allowed_dtypes() -> str:
    return ", ".join(f"0x{code:02X} ({dt.newbyteorder('=').name})" for code, dt in IDX_DTYPES.items())


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX byte string.

    Parameters
    ----------
    data : bytes
        The raw (already decompressed) file content.
    source : str, optional
        Name used in error messages (usually the file path).

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order with the shape stored in the header.

    Raises
    ------
    ValueError
        If the magic number is wrong, the type code unknown, or the data is
        shorter or longer than the header announces.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: not an IDX file (only {len(data)} bytes, need a 4-byte magic number)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{source}: bad IDX magic number {data[:4].hex()} (the first two bytes must be 0x00 0x00)"
        )
    if code not in IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02X}; allowed: {_allowed_dtypes()}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{source}: truncated IDX header ({len(data)} bytes, need {header_len} for {ndim} dimensions)"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = header_len + count * dtype.itemsize
    if len(data) < expected:
        raise ValueError(
            f"{source}: truncated IDX file: header announces shape {shape} of {dtype.newbyteorder('=').name} "
            f"({expected} bytes in total) but only {len(data)} bytes are present"
        )
    if len(data) > expected:
        raise ValueError(
            f"{source}: {len(data) - expected} unexpected trailing bytes after IDX data of shape {shape}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=header_len)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as uncompressed IDX bytes.

    Parameters
    ----------
    array : numpy.ndarray
        Array of dtype uint8, int8, int16, int32, float32 or float64 (any
        byte order), with at most 255 dimensions each smaller than 2**32.

    Returns
    -------
    bytes
        The IDX encoding (header followed by big-endian data).

    Raises
    ------
    ValueError
        If the dtype or the shape cannot be represented in IDX.
    """
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _CODE_BY_KIND:
        raise ValueError(
            f"dtype {array.dtype} cannot be stored in IDX; allowed: {_allowed_dtypes()} "
            "(cast the array first, e.g. labels.astype(np.uint8))"
        )
    if array.ndim > 255:
        raise ValueError(f"IDX supports at most 255 dimensions, got {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimension sizes must be < 2**32, got shape {array.shape}")
    code = _CODE_BY_KIND[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    return header + body


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.  Compression is detected from the first two bytes.

    Returns
    -------
    numpy.ndarray
        The stored array, in native byte order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not valid IDX (bad magic number, unknown type code,
        truncated or corrupt gzip stream, wrong length).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == _GZIP_MAGIC
    if not gzipped:
        return decode_idx(path.read_bytes(), source=str(path))
    try:
        with gzip.open(path, "rb") as fh:
            # decompress only as much as the header announces (+1 byte to detect trailing data), so that a
            # small gzip bomb cannot expand into memory beyond the size of the array it claims to hold
            head = fh.read(4)
            ndim = head[3] if len(head) == 4 else 0
            head += fh.read(4 * ndim)
            raw = head + fh.read(_announced_size(head) - len(head) + 1)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    return decode_idx(raw, source=str(path))


def _announced_size(head: bytes) -> int:
    """Total byte size an IDX header announces (header included); the header's length when it is malformed."""
    if len(head) < 4 or head[2] not in IDX_DTYPES or len(head) < 4 + 4 * head[3]:
        return len(head)
    shape = np.frombuffer(head, dtype=">u4", count=head[3], offset=4).astype(np.int64)
    return len(head) + int(np.prod(shape, dtype=np.int64)) * IDX_DTYPES[head[2]].itemsize


def write_idx(path: PathLike, array: np.ndarray) -> Path:
    """Write an array to an IDX file, gzip-compressed when the name ends in ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; parent directories must exist.
    array : numpy.ndarray
        Array to store (see :func:`encode_idx` for the allowed dtypes).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)
    return path
