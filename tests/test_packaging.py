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


def test_every_package_folder_is_listed_in_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import pytest

        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {str(p.parent.relative_to(ROOT / "src")).replace("/", ".")
               for p in (ROOT / "src" / "bilevel").rglob("__init__.py")}
    bench = {("bilevel_benchmarks." + str(p.parent.relative_to(ROOT / "benchmarks")).replace("/", ".")).rstrip(".")
             for p in (ROOT / "benchmarks").rglob("__init__.py")
             if ".venv" not in p.parts and "jax" not in p.parts}  # jax/: a git-ignored export of a peer's code  # "." for the root
    assert set(data["packages"]) == folders | bench  # benchmarks/ is bilevel_benchmarks, its subfolders too
    assert data["package-dir"]["bilevel_benchmarks"] == "benchmarks"
    assert (ROOT / "benchmarks" / "__init__.py").is_file()
