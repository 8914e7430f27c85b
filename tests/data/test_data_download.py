"""download() and the data CLI against a local HTTP server (no internet needed)."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest

from bilevel.data import DownloadError, download, load_mnist, read_idx
from bilevel.data import fetch as download_module
from bilevel.data.cli import add_subparser, main

from data_testutils import write_fake_dataset

OFFICIAL = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_default_urls_and_file_names():
    assert download_module.FASHION_MNIST_BASE_URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert download_module.DEFAULT_BASE_URLS["mnist"].startswith("https://")
    assert download_module.official_files("fashion-mnist") == OFFICIAL
    assert download_module.official_files("mnist") == OFFICIAL


def test_download_from_local_server(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www / "mnist", n_train=40, n_test=20)
    dest = download("mnist", dest=isolated / "dl", base_url=base_url + "mnist", timeout=5)
    assert dest == isolated / "dl"
    assert sorted(p.name for p in dest.iterdir()) == sorted(OFFICIAL)  # no temporary files left
    for name in OFFICIAL:
        np.testing.assert_array_equal(read_idx(dest / name), read_idx(www / "mnist" / name))
    images, labels = load_mnist("train", root=dest)
    assert images.shape == (40, 28, 28) and labels.shape == (40,)


def test_default_destination_is_the_cache_the_loaders_search(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    dest = download("fashion-mnist", base_url=base_url, timeout=5)
    assert dest == isolated / "home" / ".cache" / "bilevel" / "fashion-mnist"
    from bilevel.data import load_fashion_mnist

    assert load_fashion_mnist("test")[0].shape == (10, 28, 28)


def test_existing_valid_files_are_kept_and_force_refetches(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    dest = download("mnist", dest=isolated / "dl", base_url=base_url, timeout=5)
    # the server is not needed any more: nothing is fetched again
    assert download("mnist", dest=dest, base_url=closed_port_url(), timeout=5) == dest
    write_fake_dataset(www, n_train=30, n_test=10)
    assert len(read_idx(dest / "train-labels-idx1-ubyte.gz")) == 20
    download("mnist", dest=dest, base_url=base_url, timeout=5, force=True)
    assert len(read_idx(dest / "train-labels-idx1-ubyte.gz")) == 30


def test_http_404_is_a_clear_error_and_leaves_nothing(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    (www / "t10k-images-idx3-ubyte.gz").unlink()
    dest = isolated / "dl"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download("fashion-mnist", dest=dest, base_url=base_url, timeout=5)
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
        download("mnist", dest=dest, base_url=base_url, timeout=5)
    assert list(dest.iterdir()) == []


def test_wrong_shape_is_rejected(http_server, isolated):
    base_url, www = http_server
    write_fake_dataset(www, n_train=20, n_test=10)
    from bilevel.data import write_idx

    write_idx(www / "train-images-idx3-ubyte.gz", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(DownloadError, match=r"expected an array of shape \(60000, 28, 28\)"):
        download("mnist", dest=isolated / "dl", base_url=base_url, timeout=5)


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
    assert main(["download", "mnist", "--dest", str(dest), "--base-url", base_url]) == 0
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
    assert (args.name, args.dest, args.base_url, args.timeout, args.force) == (
        "fashion-mnist", "/tmp/x", "http://h/", 30.0, False)
    assert callable(args.func) and args.func.__name__ == "_cmd_download"
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])  # a data sub-command is required
