"""download() and the data CLI against a local HTTP server (no internet needed)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.server
import socket
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from bilevel.app.data import DownloadError, download, load_mnist, read_idx
from bilevel.app.data import fetch as download_module
from bilevel.app.data.cli import add_subparser, main

from data_testutils import write_fake_dataset

OFFICIAL = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def sha256_table(directory: Path) -> dict[str, str]:
    """The SHA-256 of the four official names in ``directory`` (what a private mirror would publish)."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in OFFICIAL}


def test_default_urls_and_file_names():
    mirrors = download_module.MIRRORS
    assert set(mirrors) == {"mnist", "fashion-mnist"}
    # https everywhere, except Fashion-MNIST's own (http-only) bucket from its README, tried last
    assert all(u.startswith("https://") for u in mirrors["mnist"])
    assert all(u.startswith("https://") for u in mirrors["fashion-mnist"][:-1])
    assert mirrors["fashion-mnist"][-1] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert download_module.DEFAULT_BASE_URLS == {k: v[0] for k, v in mirrors.items()}
    assert download_module.official_files("fashion-mnist") == OFFICIAL
    assert download_module.official_files("mnist") == OFFICIAL


def test_every_official_file_has_a_pinned_hash_and_caps():
    hexdigits = set("0123456789abcdef")
    for name in ("mnist", "fashion-mnist"):
        table = download_module.OFFICIAL_FILES[name]
        assert sorted(table) == sorted(OFFICIAL)
        for filename, entry in table.items():
            assert entry.name == filename
            assert len(entry.sha256) == 64 and set(entry.sha256) <= hexdigits
            assert len(entry.md5) == 32 and set(entry.md5) <= hexdigits
            cap = download_module.max_download_bytes(filename, entry)
            assert entry.size < cap <= entry.size * 1.02 + 1024  # a bit above the real size
            assert entry.size < download_module.max_idx_bytes(filename)
    # decompressed caps are the exact official IDX sizes
    assert download_module.max_idx_bytes("train-images-idx3-ubyte.gz") == 16 + 60000 * 784
    assert download_module.max_idx_bytes("t10k-images-idx3-ubyte.gz") == 16 + 10000 * 784
    assert download_module.max_idx_bytes("train-labels-idx1-ubyte.gz") == 8 + 60000
    assert download_module.max_idx_bytes("t10k-labels-idx1-ubyte.gz") == 8 + 10000
    assert len({e.sha256 for t in download_module.OFFICIAL_FILES.values() for e in t.values()}) == 8


def test_download_from_local_server(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www / "mnist", n_train=40, n_test=20)
    dest = download("mnist", dest=isolated / "dl", base_url=base_url + "mnist", timeout=5,
                    sha256=sha256_table(www / "mnist"))
    assert dest == isolated / "dl"
    assert sorted(p.name for p in dest.iterdir()) == sorted(OFFICIAL)  # no temporary files left
    for name in OFFICIAL:
        np.testing.assert_array_equal(read_idx(dest / name), read_idx(www / "mnist" / name))
    images, labels = load_mnist("train", root=dest)
    assert images.shape == (40, 28, 28) and labels.shape == (40,)


def test_default_destination_is_the_cache_the_loaders_search(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    dest = download("fashion-mnist", base_url=base_url, timeout=5, sha256=sha256_table(www))
    assert dest == isolated / "home" / ".cache" / "bilevel" / "fashion-mnist"
    from bilevel.app.data import load_fashion_mnist

    assert load_fashion_mnist("test")[0].shape == (10, 28, 28)


def test_existing_valid_files_are_kept_and_force_refetches(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    first = sha256_table(www)
    dest = download("mnist", dest=isolated / "dl", base_url=base_url, timeout=5, sha256=first)
    # the server is not needed any more: nothing is fetched again
    assert download("mnist", dest=dest, base_url=closed_port_url(), timeout=5, sha256=first) == dest
    write_fake_dataset(www, n_train=30, n_test=10)
    assert len(read_idx(dest / "train-labels-idx1-ubyte.gz")) == 20
    download("mnist", dest=dest, base_url=base_url, timeout=5, force=True, sha256=sha256_table(www))
    assert len(read_idx(dest / "train-labels-idx1-ubyte.gz")) == 30


def test_http_404_is_a_clear_error_and_leaves_nothing(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    table = sha256_table(www)
    (www / "t10k-images-idx3-ubyte.gz").unlink()
    dest = isolated / "dl"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download("fashion-mnist", dest=dest, base_url=base_url, timeout=5, sha256=table)
    assert f"{base_url}t10k-images-idx3-ubyte.gz" in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert not any(p.name.endswith(".part") for p in dest.iterdir())
    assert not (dest / "t10k-images-idx3-ubyte.gz").exists()


def test_non_idx_content_is_rejected_before_rename(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    (www / "train-images-idx3-ubyte.gz").write_bytes(b"<html>mirror moved</html>")
    dest = isolated / "dl"
    with pytest.raises(DownloadError, match="not a valid IDX file"):
        download("mnist", dest=dest, base_url=base_url, timeout=5, sha256=sha256_table(www))
    assert list(dest.iterdir()) == []


def test_wrong_shape_is_rejected(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    from bilevel.app.data import write_idx

    write_idx(www / "train-images-idx3-ubyte.gz", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(DownloadError, match=r"expected an array of shape \(60000, 28, 28\)"):
        download("mnist", dest=isolated / "dl", base_url=base_url, timeout=5, sha256=sha256_table(www))


def test_unreachable_url_gives_clear_error(isolated):
    url = closed_port_url()
    with pytest.raises(DownloadError) as info:
        download("mnist", dest=isolated / "dl", base_url=url, timeout=5)
    message = str(info.value)
    assert f"cannot download {url}train-images-idx3-ubyte.gz" in message
    assert "unreachable" in message and "BILEVEL_DATA" in message
    assert list((isolated / "dl").iterdir()) == []


def test_cli_download(http_server, isolated, capsys):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    dest = isolated / "cli"
    sums = isolated / "SHA256SUMS"
    sums.write_text("# a private mirror\n" + "".join(f"{h}  {n}\n" for n, h in sha256_table(www).items()))
    # without --sha256sums the pinned official hashes apply: the fake files are refused
    assert main(["download", "mnist", "--dest", str(dest), "--base-url", base_url]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert list(dest.iterdir()) == []
    assert main(["download", "mnist", "--dest", str(dest), "--base-url", base_url, "--sha256sums", str(sums)]) == 0
    assert str(dest) in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == sorted(OFFICIAL)
    assert main(["locate", "mnist", "--root", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)


def test_cli_errors(isolated, capsys):
    assert main(["download", "mnist", "--dest", str(isolated / "x"), "--base-url", closed_port_url(),
                 "--timeout", "5"]) == 1
    assert "error: cannot download" in capsys.readouterr().err
    assert main(["locate", "mnist"]) == 1
    assert "Searched directories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["download", "cifar"])
    assert info.value.code == 2


def test_add_subparser_registers_data_download():
    parser = argparse.ArgumentParser(prog="bilevel")
    sub = parser.add_subparsers(dest="command")
    add_subparser(sub)
    args = parser.parse_args(["data", "download", "fashion-mnist", "--dest", "/tmp/x", "--base-url", "http://h/"])
    assert args.command == "data" and args.data_command == "download"
    assert (args.name, args.dest, args.base_url, args.timeout, args.force, args.max_time, args.sha256sums) == (
        "fashion-mnist", "/tmp/x", "http://h/", 30.0, False, download_module.DEFAULT_MAX_TIME, None)
    args = parser.parse_args(["data", "download", "mnist", "--max-time", "5", "--sha256sums", "S"])
    assert (args.max_time, args.sha256sums) == (5.0, "S")
    assert callable(args.func) and args.func.__name__ == "_cmd_download"
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])  # a data sub-command is required


# ------------------------------------------------------------------ hostile or broken servers (issue 14)
def gzip_bomb(gib: int = 1) -> bytes:
    """A valid single-member gzip file of ``gib`` GiB of zeros (about 1 MB per GiB), built in well under a second."""
    mib = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp.compress(mib)
    block = comp.flush(zlib.Z_FULL_FLUSH)  # 1 MiB of zeros, compressor state reset: the same bytes every time
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(mib, crc)
    body = block * (1024 * gib) + comp.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", crc, (gib << 30) & 0xFFFFFFFF)


def test_gzip_bomb_helper_is_a_real_bomb():
    bomb = gzip_bomb(1)
    assert len(bomb) < 1_100_000
    assert struct.unpack("<I", bomb[-4:])[0] == 1 << 30  # gzip trailer: uncompressed size mod 2**32
    out = zlib.decompressobj(31)
    total, data = 0, bomb
    while data and total < 1 << 27:  # the first 128 MiB (all of it takes seconds)
        chunk = out.decompress(data, 1 << 22)
        assert chunk == bytes(len(chunk))
        total += len(chunk)
        data = out.unconsumed_tail
    assert total >= 1 << 27 and not out.eof


def test_wrong_hash_is_refused_and_nothing_is_left(http_server, isolated):
    """A mirror serving valid IDX files that are not the official ones: refused by the pinned SHA-256."""
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    served = hashlib.sha256((www / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    official = download_module.OFFICIAL_FILES["fashion-mnist"]["train-images-idx3-ubyte.gz"].sha256
    dest = isolated / "dl"
    with pytest.raises(DownloadError) as info:
        download("fashion-mnist", dest=dest, base_url=base_url, timeout=5)
    message = str(info.value)
    assert "SHA-256 mismatch for train-images-idx3-ubyte.gz" in message
    assert f"expected {official}, got {served}" in message
    assert list(dest.iterdir()) == []  # neither the file nor its temporary copy


def test_wrong_hash_in_a_private_table_is_refused(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    table = dict(sha256_table(www), **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    dest = isolated / "dl"
    with pytest.raises(DownloadError, match=r"t10k-labels-idx1-ubyte.gz: expected 0{64}, got [0-9a-f]{64}"):
        download("mnist", dest=dest, base_url=base_url, timeout=5, sha256=table)
    # the three good files are kept, the refused one is not there under any name
    assert sorted(p.name for p in dest.iterdir()) == sorted(OFFICIAL[:3])


def test_gzip_bomb_is_refused_in_bounded_memory(http_server, isolated):
    """1 GiB of zeros in 1 MB of gzip, with a matching hash (the mirror publishes its own checksums)."""
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    (www / "train-images-idx3-ubyte.gz").write_bytes(gzip_bomb(1))
    table = sha256_table(www)
    dest = isolated / "dl"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DownloadError, match="decompresses to more than 47040016 bytes") as info:
            download("mnist", dest=dest, base_url=base_url, timeout=5, sha256=table)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert "bomb" in str(info.value)
    assert peak < 8 * 2**20, f"peak Python memory {peak / 2**20:.1f} MiB while refusing a 1 GiB gzip bomb"
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert list(dest.iterdir()) == []


def test_gzip_bomb_already_in_the_destination_is_not_decompressed(http_server, isolated):
    """A bomb left under an official name is checked (hash, bounded) before anything reads it, then replaced."""
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    table = sha256_table(www)
    dest = isolated / "dl"
    dest.mkdir()
    (dest / "train-images-idx3-ubyte.gz").write_bytes(gzip_bomb(1))
    tracemalloc.start()
    try:
        download("mnist", dest=dest, base_url=base_url, timeout=5, sha256=table)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    assert sha256_table(dest) == table


def test_decompressed_size_counts_every_gzip_member(tmp_path):
    member = gzip.compress(bytes(1000), mtime=0)
    path = tmp_path / "multi.gz"
    path.write_bytes(member * 5)
    assert download_module.check_decompressed_size(path, 5000) == 5000
    with pytest.raises(DownloadError, match="decompresses to more than 4999 bytes"):
        download_module.check_decompressed_size(path, 4999)
    plain = tmp_path / "plain"
    plain.write_bytes(bytes(300))
    assert download_module.check_decompressed_size(plain, 300) == 300
    with pytest.raises(DownloadError, match="more than 299 bytes"):
        download_module.check_decompressed_size(plain, 299)


class _DirHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``www`` except for the paths in ``special``: name -> method called instead."""

    www = "."
    special: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=self.www, **kwargs)

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        if name in self.special:
            try:
                getattr(self, self.special[name])()
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            super().do_GET()

    def huge_length(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.write(bytes(1000))

    def no_length(self):  # HTTP/1.0: the body ends when the connection closes
        self.send_response(200)
        self.end_headers()
        for _ in range(100):
            self.wfile.write(bytes(1000))

    def trickle(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        while not self.stop.wait(0.02):
            self.wfile.write(b"\0")
            self.wfile.flush()

    def stall(self):  # trickles for 1.5 s, then sends nothing
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        end = time.monotonic() + 1.5
        while time.monotonic() < end and not self.stop.wait(0.02):
            self.wfile.write(b"\0")
            self.wfile.flush()
        self.stop.wait(30)


@pytest.mark.parametrize("behaviour, message", [
    ("huge_length", r"Content-Length 1000000000 bytes exceeds the limit of 61632 bytes"),
    ("no_length", r"more than the limit of 61632 bytes sent"),
])
def test_oversized_file_is_refused(serve, isolated, behaviour, message):
    www = isolated / "www"
    write_fake_dataset(www, n_train=20, n_test=10)
    base_url = serve(_DirHandler, www=str(www), special={"train-labels-idx1-ubyte.gz": behaviour})
    dest = isolated / "dl"
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=message):
        download("mnist", dest=dest, base_url=base_url, timeout=5, sha256=sha256_table(www))
    assert time.perf_counter() - start < 5
    assert sorted(p.name for p in dest.iterdir()) == ["train-images-idx3-ubyte.gz"]  # nothing of the oversized file


@pytest.mark.parametrize("behaviour", ["trickle", "stall"])
def test_overall_deadline_stops_a_slow_server(serve, isolated, behaviour):
    """A server that trickles one byte every 20 ms never trips the 30 s socket timeout; the 2 s deadline does.
    One that trickles for 1.5 s and then stalls is stopped at the deadline too, not one socket timeout later
    (every read is bounded by the time left)."""
    www = isolated / "www"
    write_fake_dataset(www, n_train=20, n_test=10)
    base_url = serve(_DirHandler, www=str(www), special={"train-images-idx3-ubyte.gz": behaviour})
    dest = isolated / "dl"
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"overall time limit of 2 s exceeded"):
        download("mnist", dest=dest, base_url=base_url, timeout=30, max_time=2.0, sha256=sha256_table(www))
    elapsed = time.perf_counter() - start
    assert 1.9 < elapsed < 3.0, f"took {elapsed:.1f} s"
    assert list(dest.iterdir()) == []


def test_next_mirror_is_tried_after_a_failure(http_server, serve, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    bad = isolated / "bad"
    write_fake_dataset(bad, n_train=30, n_test=10)  # other content: wrong hashes
    bad_url = serve(_DirHandler, www=str(bad))
    dead = closed_port_url()
    dest = download("mnist", dest=isolated / "dl", mirrors=[dead, bad_url, base_url], timeout=5,
                    sha256=sha256_table(www))
    assert sha256_table(dest) == sha256_table(www)
    with pytest.raises(DownloadError) as info:
        download("mnist", dest=isolated / "dl2", mirrors=[dead, bad_url], timeout=5, sha256=sha256_table(www))
    message = str(info.value)
    assert "from any mirror" in message and f"{dead}train-images-idx3-ubyte.gz" in message
    assert f"{bad_url}train-images-idx3-ubyte.gz: SHA-256 mismatch" in message
    with pytest.raises(ValueError, match="not both"):
        download("mnist", dest=isolated / "dl3", base_url=base_url, mirrors=[base_url])
    with pytest.raises(ValueError, match="no entry for"):
        download("mnist", dest=isolated / "dl3", base_url=base_url, sha256={})


def test_read_sha256sums(tmp_path):
    path = tmp_path / "SHA256SUMS"
    digest = "ab" * 32
    path.write_text(f"# comment\n\n{digest.upper()}  dir/train-images-idx3-ubyte.gz\n"
                    f"{digest} *t10k-labels-idx1-ubyte.gz\n")
    assert download_module.read_sha256sums(path) == {"train-images-idx3-ubyte.gz": digest,
                                                     "t10k-labels-idx1-ubyte.gz": digest}
    path.write_text("xyz  name\n")
    with pytest.raises(ValueError, match="expected 'SHA256HEX  NAME'"):
        download_module.read_sha256sums(path)
