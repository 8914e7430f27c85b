"""Smoke tests of ``bilevel run`` with the real task modules (tiny sizes)."""
import json
import os
import subprocess
import sys

import pytest

from bilevel.app.run.runner import run_task


def test_hyperclean_on_digits_through_the_command_line(tmp_path):
    pytest.importorskip("bilevel.app.tasks.hyperclean")
    out = tmp_path / "hc"
    args = ["run", "hyperclean", "--dataset", "digits", "--train-size", "60", "--val-size", "60", "--test-size",
            "60", "--noise", "0.5", "--outer-steps", "3", "--inner-steps", "5", "--log-every", "2", "--threads",
            "1", "--quiet", "--out", str(out)]
    p = subprocess.run([sys.executable, "-m", "bilevel", *args], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert {"test_accuracy", "f1", "precision", "recall", "upper_final", "wall_seconds", "peak_rss_mb"} <= set(s)
    assert 0.0 <= s["test_accuracy"] <= 1.0 and s["task"] == "hyperclean" and s["outer_steps"] == 3
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 2, 3] and all("f1" in r for r in recs)
    assert (out / "curves.png").stat().st_size > 0


def test_hyperclean_mlp_with_a_learned_initialization(tmp_path):
    pytest.importorskip("bilevel.app.tasks.hyperclean")
    s = run_task("hyperclean", {"dataset": "digits", "model": "mlp", "hidden": 8, "train_size": 40, "val_size": 40,
                                "test_size": 40, "method": "iaptt", "outer_steps": 2, "inner_steps": 3},
                 tmp_path, quiet=True)
    assert s["method"] == "iaptt" and 0.0 <= s["f1"] <= 1.0


def test_toy_problem(tmp_path):
    pytest.importorskip("bilevel.app.tasks.toy")
    s = run_task("toy", {"problem": "bda", "outer_steps": 4, "log_every": 2}, tmp_path, quiet=True)
    assert s["method"] == "bda" and "x_final" in s
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # steps 0, 2, 4


def test_fewshot_tiny(tmp_path):
    pytest.importorskip("bilevel.app.tasks.fewshot")
    from bilevel.app.data import DatasetNotFoundError

    conf = {"ways": 2, "shots": 1, "queries": 2, "meta_batch": 2, "width": 4, "max_per_class": 20,
            "test_episodes": 4, "test_chunk": 2, "outer_steps": 2, "inner_steps": 2, "log_every": 1}
    try:
        s = run_task("fewshot", conf, tmp_path, quiet=True)
    except DatasetNotFoundError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    assert {"meta_test_accuracy", "meta_test_ci95"} <= set(s)
