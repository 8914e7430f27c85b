"""Package hygiene: bilevel.app.data is numpy-only at import time and exposes its public API."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import bilevel.app.data
from bilevel.app.data.cli import main

CHECK_NO_TORCH = r"""
import importlib, importlib.util, pkgutil, sys, types
spec = importlib.util.find_spec("bilevel")          # locate the package without running its __init__
stub = types.ModuleType("bilevel")
stub.__path__ = list(spec.submodule_search_locations)
sys.modules["bilevel"] = stub
import bilevel.app.data
for info in pkgutil.iter_modules(bilevel.app.data.__path__):
    if info.name != "__main__":
        importlib.import_module("bilevel.app.data." + info.name)
heavy = sorted(m for m in ("torch", "sklearn", "PIL", "matplotlib") if m in sys.modules)
print(",".join(heavy))
"""


def test_importing_the_data_package_does_not_import_torch():
    result = subprocess.run([sys.executable, "-c", CHECK_NO_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""  # neither torch nor the optional heavy libraries


def test_public_api_is_exported():
    for name in bilevel.app.data.__all__:
        assert hasattr(bilevel.app.data, name), name
    for name in ("read_idx", "write_idx", "load_fashion_mnist", "load_mnist", "download", "load_digits_dataset",
                 "hyperclean_split", "EpisodeSampler", "rotated_fashion_mnist", "load_omniglot",
                 "load_image_folder", "DatasetNotFoundError"):
        assert name in bilevel.app.data.__all__
    assert issubclass(bilevel.app.data.DatasetNotFoundError, FileNotFoundError)


def test_module_entry_point_help(capsys):
    assert importlib.util.find_spec("bilevel.app.data.__main__") is not None
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "download" in out and "locate" in out
