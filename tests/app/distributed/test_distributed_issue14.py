"""Issue 14, multi-process side: no inexact combination runs silently, and a multi-process run resumes on as
many processes (and only so), exactly."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import bilevel
from dist_testutils import env
from bilevel import parallel as D

HERE = Path(__file__).resolve().parent
WALL = ("time", "eval_time")




def _bilevel(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bilevel", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _lines(d: Path):
    return [{k: v for k, v in json.loads(s).items() if k not in WALL}
            for s in (d / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ refused, not run
def test_every_method_is_task_parallel_exact_or_refused():
    """Task parallel (a split meta-batch): the methods not in TASK_PARALLEL_EXACT (checked exact by
    test_distributed.py's meta case) are refused before any collective, with a message saying what to do."""
    ctx = D.DistContext(rank=0, world_size=2)  # no process group needed: the refusal comes first
    refused = sorted(set(bilevel.METHODS) - set(D.TASK_PARALLEL_EXACT))
    assert {"iaptt", "bvfim"} <= set(refused)
    for method in refused:
        with pytest.raises(ValueError, match=f"method {method!r} is not exact when the meta-batch is split"):
            D.DistributedOuterLoop(torch.zeros(2), torch.zeros(3, 2), ctx=ctx, method=method, outer_lr=0.1,
                                   inner_steps=2, inner_lr=0.1)
    # one process: nothing to refuse (no collective either)
    loop = D.DistributedOuterLoop(torch.zeros(2), torch.zeros(3, 2), ctx=D.DistContext(), method="iaptt",
                                  outer_lr=0.1, inner_steps=2, inner_lr=0.1)
    assert loop.reduce_grads is not None


FS_TINY = ["--width", "4", "--ways", "3", "--shots", "1", "--queries", "3", "--meta-batch", "4", "--max-per-class",
           "20", "--test-episodes", "4", "--test-chunk", "4", "--inner-steps", "2", "--outer-steps", "3",
           "--log-every", "1", "--dtype", "float64", "--seed", "3", "--quiet", "--threads", "1"]


@pytest.mark.slow
def test_cli_fewshot_nproc2_refuses_iaptt_before_creating_the_run_directory(tmp_path):
    out = tmp_path / "fs"
    p = _bilevel("run", "fewshot", *FS_TINY, "--method", "iaptt", "--out", str(out), "--nproc", "2", cwd=tmp_path)
    assert p.returncode != 0
    assert "method 'iaptt' is not exact when the meta-batch is split over processes" in p.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------ resume
HC_TINY = ["--dataset", "digits", "--train-size", "60", "--val-size", "40", "--test-size", "50", "--inner-steps",
           "5", "--outer-steps", "4", "--log-every", "1", "--dtype", "float64", "--seed", "2", "--quiet",
           "--threads", "1", "--checkpoint-every", "1"]


@pytest.mark.slow
def test_cli_nproc2_run_resumes_on_two_processes_only_and_exactly(tmp_path):
    straight, victim = tmp_path / "straight", tmp_path / "victim"
    p = _bilevel("run", "hyperclean", *HC_TINY, "--out", str(straight), "--nproc", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert yaml.safe_load((straight / "run_options.yaml").read_text())["world_size"] == 2
    # the same run, as if killed after outer step 3: its last checkpoint and summary are gone, the lines of
    # step 4 are still there (a resume truncates them and writes them again). A copy of the straight run's
    # directory is that run (a second launch of the same command writes the same files: runs are deterministic).
    shutil.copytree(straight, victim)
    for name in ("summary.json", "curves.png", "checkpoints/step-000004.pt"):
        (victim / name).unlink()
    metrics = (victim / "metrics.jsonl").read_bytes()

    p = _bilevel("run", "--resume", str(victim), "--quiet", cwd=tmp_path)  # one process: refused
    assert p.returncode == 2
    assert "bilevel run: error: cannot resume" in p.stderr and "the run was made on 2" in p.stderr
    assert f"bilevel run --resume {victim} --nproc 2" in p.stderr
    assert (victim / "metrics.jsonl").read_bytes() == metrics and not (victim / "summary.json").exists()

    p = _bilevel("run", "--resume", str(victim), "--quiet", "--nproc", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote ") == 1  # rank 0 alone reports
    assert _lines(victim) == _lines(straight)  # bitwise, one writer: no doubled line
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (straight, victim))
    for key in ("loop_seconds", "wall_seconds", "peak_rss_mb"):
        s1.pop(key), s2.pop(key)
    assert s1 == s2
