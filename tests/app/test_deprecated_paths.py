"""The old import paths of the app's public modules keep working, with a DeprecationWarning, and give the very
objects of their new home (bilevel.tasks -> bilevel.app.tasks, bilevel.data -> bilevel.app.data,
bilevel.distributed -> bilevel.parallel + bilevel.app.launch)."""
import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("old, new", [("bilevel.tasks", "bilevel.app.tasks"), ("bilevel.data", "bilevel.app.data"),
                                      ("bilevel.distributed", "bilevel.parallel")])
def test_old_path_warns(old, new):
    out = _run(f"import {old}")
    assert out.returncode != 0 and "DeprecationWarning" in out.stderr and new in out.stderr, out.stderr[-800:]


def test_old_submodule_paths_are_the_new_modules():
    code = """
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
from bilevel.data.hyperclean import hyperclean_split
from bilevel.tasks.toy import build
import bilevel.data, bilevel.tasks, bilevel.distributed
import bilevel.app.data.hyperclean, bilevel.app.tasks.toy, bilevel.app.launch, bilevel.parallel
assert hyperclean_split is bilevel.app.data.hyperclean.hyperclean_split
assert build is bilevel.app.tasks.toy.build
assert bilevel.data.hyperclean is bilevel.app.data.hyperclean
assert bilevel.tasks.toy is bilevel.app.tasks.toy
assert bilevel.data.load_digits_dataset is bilevel.app.data.load_digits_dataset
assert bilevel.distributed.grad_reducer is bilevel.parallel.grad_reducer
assert bilevel.distributed.DistributedOuterLoop is bilevel.parallel.DistributedOuterLoop
assert bilevel.distributed.launch is bilevel.app.launch.launch
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_python_m_bilevel_data_still_runs():
    out = subprocess.run([sys.executable, "-m", "bilevel.data", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert "usage" in out.stdout.lower()
