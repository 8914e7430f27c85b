"""The package ships its PEP 561 marker."""
from pathlib import Path

import bilevel

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_marker_is_present_and_declared_as_package_data():
    assert (Path(bilevel.__file__).parent / "py.typed").is_file()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import pytest

        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["bilevel"]
