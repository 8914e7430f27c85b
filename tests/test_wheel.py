"""`bilevel bench` works from an installed wheel, outside the checkout: the bench driver and its references are
part of the distribution (bilevel_benchmarks), and nothing is read from the repository."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("bilevel-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("bilevel/__init__.py", "bilevel/py.typed", "bilevel/app/cli.py",
                     "bilevel/app/reproduce/paper_results.csv", "bilevel_benchmarks/bench.py",
                     "bilevel_benchmarks/references.py"):
        assert required in names, required
    assert not any(n.startswith(("tests/", "benchmarks/", "bilevel_benchmarks/results")) for n in names)


@pytest.mark.slow
def test_bench_runs_from_the_installed_wheel(wheel, tmp_path):
    # a fresh environment: the wheel installed into a folder of its own (--target never touches this
    # interpreter's installation, unlike --prefix, which would uninstall the checkout's editable install), the
    # dependencies (torch, ...) from this interpreter's site-packages, a working directory outside the checkout
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site processing, so the checkout's editable install (a .pth file) is not seen
    env["PYTHONPATH"] = os.pathsep.join([str(site), *deps])
    code = ("import sys, bilevel, bilevel_benchmarks; from bilevel.app.cli import main; "
            "print(bilevel.__file__, bilevel_benchmarks.__file__, file=sys.stderr); "
            "raise SystemExit(main(['bench', '--quick', '--only', 'toy', '--threads', '1', '--out', 'out']))")
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    where = run.stderr.splitlines()[0]
    assert str(ROOT) not in where and str(site) in where, where
    assert (tmp_path / "out" / "bench.json").is_file() and (tmp_path / "out" / "BENCHMARKS.md").is_file()
