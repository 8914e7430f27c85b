"""`make docs`: the API site builds with ``mkdocs build --strict`` (a broken link, anchor or reference fails), every
docs page is in the navigation, and the API pages hold the docstrings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

mkdocs = pytest.importorskip("mkdocs") if not os.environ.get("CI") else __import__("mkdocs")  # CI: must be there


def _nav_files(nav):
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            if isinstance(value, list):
                yield from _nav_files(value)
            else:
                yield value


def test_every_docs_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(_nav_files(config["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed, (sorted(pages - listed), sorted(listed - pages))


def test_site_builds_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    api = (tmp_path / "site" / "api" / "bilevel" / "index.html").read_text()
    assert "Hypergradient of phi(x)" in api and "inner_steps" in api  # hypergrad's docstring, rendered
    assert ":func:<code>" not in (tmp_path / "site" / "api" / "helpers" / "index.html").read_text()


def test_every_method_has_a_page():
    """docs/methods/<name>.md for every ``bilevel.METHODS`` name and docs/methods/stochastic/<name>.md for every
    ``bilevel.stochastic.METHODS`` name, and nothing else; a stochastic page names each of its method's options and
    the guide (docs/stochastic.md) links it."""
    import bilevel
    from bilevel import stochastic

    methods = ROOT / "docs" / "methods"
    assert {p.stem for p in methods.glob("*.md")} - {"README"} == set(bilevel.METHODS)
    assert {p.stem for p in (methods / "stochastic").glob("*.md")} == set(stochastic.METHODS)
    guide = (ROOT / "docs" / "stochastic.md").read_text(encoding="utf-8")
    for name, method in stochastic.METHODS.items():
        page = (methods / "stochastic" / f"{name}.md").read_text(encoding="utf-8")
        missing = [opt for opt in method.options + ("inner_lr", "outer_lr") if f"`{opt}`" not in page]
        assert not missing, f"docs/methods/stochastic/{name}.md does not document {missing}"
        assert f"(methods/stochastic/{name}.md)" in guide, f"docs/stochastic.md does not link the page of {name}"
