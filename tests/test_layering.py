"""The layering, read statically from the source: the core never imports the app or a third-party package beyond
torch and numpy, and no module of `bilevel` takes part in an import cycle.

Every `import` and `from ... import` in every module under src/bilevel is read with `ast`, at any depth
(function-local imports included), relative imports resolved, and `importlib.import_module("literal")` calls
counted as imports. `from pkg import name` is an import of the submodule `pkg.name` when that module exists, else
of `pkg`.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APP = "bilevel.app"
#: what the core may import besides the standard library and bilevel's own core
CORE_THIRD_PARTY = {"torch", "numpy"}
#: modules outside bilevel.app that may import the app, and why
APP_GATEWAYS = {
    "bilevel.__main__": "`python -m bilevel` is the `bilevel` command",
    "bilevel.tasks": "deprecated alias of bilevel.app.tasks (never imported by `import bilevel`)",
    "bilevel.data": "deprecated alias of bilevel.app.data (never imported by `import bilevel`)",
    "bilevel.distributed": "deprecated alias of bilevel.parallel + bilevel.app.launch (never imported by `import bilevel`)",
}


# ------------------------------------------------------------------------------------------ the import graph
def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(source: str, module: str, is_package: bool, known: Set[str]) -> Set[str]:
    """Absolute names of every module that ``source`` (the text of ``module``) imports, at any depth."""
    out: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module or "") if node.level else node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.JoinedStr) and node.args[0].values
              and isinstance(node.args[0].values[0], ast.Constant)):
            out.add(str(node.args[0].values[0].value).rstrip("."))    # f"bilevel.app.tasks.{name}" -> the package
    return out


def import_graph(root: Path = SRC) -> Dict[str, Set[str]]:
    files = {module_name(p, root): p for p in sorted((root / "bilevel").rglob("*.py"))}
    known = set(files)
    return {m: imports_of(p.read_text(), m, p.name == "__init__.py", known) for m, p in files.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layering_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """``"module imports name"`` for every import of the app or of a non-core package by a core module."""
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for module, names in sorted(graph.items()):
        if _in(module, APP) or module in APP_GATEWAYS:
            continue
        for name in sorted(names):
            top = _top(name)
            if _in(name, APP) or not (top == "bilevel" or top in CORE_THIRD_PARTY or top in stdlib):
                bad.append(f"{module} imports {name}")
    return bad


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module: the import cycles."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def edges(m: str) -> Iterable[str]:
        # importing a.b.c runs the packages a and a.b first (those that are not already running, as m's own
        # ancestors are): an import of bilevel.estimators.base also executes bilevel/estimators/__init__.py
        own = {m} | {m.rsplit(".", i)[0] for i in range(1, m.count(".") + 1)}
        out = set()
        for n in graph.get(m, ()):
            parts = n.split(".")
            out.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in graph and p not in own)
        return sorted(out)

    def visit(m: str) -> None:                              # Tarjan (recursive: the graph is shallow)
        index[m] = low[m] = len(index)
        stack.append(m)
        on.add(m)
        for n in edges(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            comp = []
            while True:
                n = stack.pop()
                on.discard(n)
                comp.append(n)
                if n == m:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


# ------------------------------------------------------------------------------------------ the checks
@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    return import_graph()


def test_the_graph_sees_every_kind_of_import(graph):
    # the parser's own evidence, on modules whose imports are known
    assert "torch" in graph["bilevel.api"]
    assert "bilevel.methods" in graph["bilevel.api"]
    assert "yaml" in graph["bilevel.app.config"]
    assert "bilevel.app.data.cli" in graph["bilevel.app.cli"]


def test_core_imports_only_torch_numpy_stdlib_and_core(graph):
    assert not layering_violations(graph)


def test_no_import_cycle(graph):
    assert not cycles(graph)


def test_gateways_exist():
    # an exemption for a module that no longer exists would hide nothing, but it must not linger
    for name in APP_GATEWAYS:
        rel = Path(*name.split("."))
        assert (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file(), name


@pytest.mark.parametrize("line, expected", [
    ("import yaml", "yaml"),
    ("import matplotlib.pyplot as plt", "matplotlib.pyplot"),
    ("from tqdm import tqdm", "tqdm"),
    ("import sklearn", "sklearn"),
    ("from bilevel.app import cli", "bilevel.app.cli"),
    ("from .app.run import runner", "bilevel.app.run.runner"),
    ("def f():\n    from .app import cli\n    return cli", "bilevel.app.cli"),
    ("import importlib\nimportlib.import_module('bilevel.app.demo')", "bilevel.app.demo"),
])
def test_a_forbidden_import_is_caught(graph, line, expected):
    fake = {k: set(v) for k, v in graph.items()}
    fake["bilevel.linear_solve"] |= imports_of(line, "bilevel.linear_solve", False, set(graph))
    assert f"bilevel.linear_solve imports {expected}" in layering_violations(fake)


def test_a_cycle_is_caught(graph):
    fake = {k: set(v) for k, v in graph.items()}
    fake["bilevel.linear_solve"].add("bilevel.api")          # api -> methods -> ... -> linear_solve -> api
    assert any("bilevel.linear_solve" in c and "bilevel.api" in c for c in cycles(fake))


def test_a_cycle_through_a_package_init_is_caught(graph):
    # implicit_diff -> estimators.base runs estimators/__init__ -> estimators.implicit -> implicit_diff: a real
    # ImportError when bilevel.implicit_diff is imported first, although no module imports itself directly
    fake = {k: set(v) for k, v in graph.items()}
    fake["bilevel.implicit_diff"].add("bilevel.estimators.base")
    assert any("bilevel.implicit_diff" in c and "bilevel.estimators" in c for c in cycles(fake))


def _loaded_after(code: str) -> Set[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(sorted(sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(eval(out.stdout))


def test_import_bilevel_loads_no_app_and_no_app_dependency():
    # what torch and numpy load themselves (torch imports tqdm, for one) is not the library's doing
    baseline = _loaded_after("import torch, torch.distributed, numpy")
    loaded = _loaded_after("import bilevel, bilevel.prox, bilevel.schedules, bilevel.problems, bilevel.parallel")
    assert {"bilevel.api", "bilevel.prox", "bilevel.schedules", "bilevel.problems", "bilevel.parallel"} <= loaded
    bad = sorted(m for m in loaded - baseline if _in(m, APP) or m in APP_GATEWAYS
                 or _top(m) in ("yaml", "matplotlib", "tqdm", "sklearn", "PIL", "filelock", "bilevel_benchmarks"))
    assert not bad, bad
