"""IDX reader/writer: exact encoding, round trips and clear errors on damaged files."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from bilevel.app.data.idx import decode_idx, encode_idx, read_idx, write_idx

from data_testutils import FASHION_DIR, requires_fashion

DTYPES = ["u1", "i1", ">i2", "<i2", ">i4", "<i4", ">f4", "<f4", ">f8", "<f8"]
idx_arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: arrays(np.dtype(dt), array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    native = a.dtype.newbyteorder("=")
    return a.shape == b.shape and b.dtype == native and a.astype(native).tobytes() == b.tobytes()


@settings(max_examples=150, deadline=None)
@given(idx_arrays)
def test_encode_decode_round_trip(array):
    decoded = decode_idx(encode_idx(array))
    assert same_bits(array, decoded)
    assert decoded.flags.writeable


@settings(max_examples=40, deadline=None)
@given(idx_arrays, st.booleans())
def test_file_round_trip(array, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.idx.gz" if gz else "a.idx")
        write_idx(path, array)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
        assert same_bits(array, read_idx(path))


def test_exact_header_and_big_endian_layout():
    data = encode_idx(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    assert data == bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    data = encode_idx(np.array([258, -2], dtype="<i2"))
    assert data == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE])
    assert encode_idx(np.array([1.5], dtype=np.float64))[2] == 0x0E
    assert encode_idx(np.array([1.5], dtype=np.float32))[2] == 0x0D
    assert encode_idx(np.array([1], dtype=np.int32))[2] == 0x0C
    assert encode_idx(np.array([1], dtype=np.int8))[2] == 0x09


def test_compression_detected_from_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(encode_idx(array))
    gz_named_raw = tmp_path / "compressed"
    gz_named_raw.write_bytes(gzip.compress(encode_idx(array)))
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "not an IDX file"),
        (b"\x12\x34\x08\x01\x00\x00\x00\x01\x07", "bad IDX magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated IDX file"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "unexpected trailing bytes"),
    ],
)
def test_decode_errors(data, message):
    with pytest.raises(ValueError, match=message):
        decode_idx(data)


def test_truncated_files_raise_value_error_with_path(tmp_path):
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(encode_idx(images)[:-100])
    with pytest.raises(ValueError, match="truncated IDX file") as info:
        read_idx(raw)
    assert str(raw) in str(info.value)
    gz = tmp_path / "images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(encode_idx(images))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(gz)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_, np.complex64])
def test_unsupported_dtypes_are_rejected(tmp_path, dtype):
    with pytest.raises(ValueError, match="cannot be stored in IDX; allowed"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=dtype))


@requires_fashion
def test_real_fashion_label_file_header():
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))


def test_gzip_bomb_in_the_data_folder_is_read_in_bounded_memory(tmp_path):
    """A gzip file whose IDX header announces 10 bytes but which expands to 256 MiB: read_idx decompresses only
    what the header announces (+1 byte), so it refuses the trailing data without holding it in memory."""
    import gzip
    import tracemalloc

    from bilevel.app.data.idx import read_idx

    path = tmp_path / "bomb-idx1-ubyte.gz"
    header = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(header + bytes(10))
        block = bytes(1 << 20)
        for _ in range(256):
            fh.write(block)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="trailing bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * (1 << 20), peak
