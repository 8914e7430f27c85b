"""Fixtures for the data-layer tests: an isolated search path, a fake IDX data set, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from bilevel.app.data import sources
from data_testutils import write_fake_dataset


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """No BILEVEL_DATA, HOME in tmp_path, and no system directories: nothing is found by accident."""
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(
        sources, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "system" / "fashion-mnist"),), "mnist": ()}
    )
    return tmp_path


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A directory holding a small fake Fashion-MNIST/MNIST (300 train, 100 test samples, gzip)."""
    return write_fake_dataset(tmp_path_factory.mktemp("fake_idx"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


def _no_proxy(monkeypatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _serve(handler):
    """Start a threaded HTTP server on 127.0.0.1 (random port); returns (server, thread)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server, thread


def _stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serve ``tmp_path / "www"`` on 127.0.0.1 (random port); yields (base_url, directory)."""
    _no_proxy(monkeypatch)
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server, thread = _serve(handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", www
    finally:
        _stop(server, thread)


@pytest.fixture
def serve(monkeypatch):
    """Factory: ``serve(handler_class, **class_attributes) -> base_url`` starts a server with that handler.

    The handler class gets a ``stop`` attribute, a :class:`threading.Event` set when the test ends, so
    handlers that stall or trickle can wait on it instead of sleeping past the test.
    """
    _no_proxy(monkeypatch)
    stop = threading.Event()
    started = []

    def start(handler_class, **attributes):
        handler = type(handler_class.__name__, (handler_class,), dict(attributes, stop=stop))
        server, thread = _serve(handler)
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    try:
        yield start
    finally:
        stop.set()
        for server, thread in started:
            _stop(server, thread)
