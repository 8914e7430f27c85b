"""SIGKILL a real run mid-way, resume it with ``bilevel run --resume DIR`` and compare with a straight run."""
import os
import signal
import subprocess
import time

import pytest

from resume_test_helpers import bilevel_cmd, comparable_lines, comparable_summary, env, lines, run

# hyper-cleaning on the embedded digits data, tiny sizes, float64, one thread: bitwise reproducible
TASK = ["run", "hyperclean", "--dataset", "digits", "--train-size", "100", "--val-size", "100", "--test-size",
        "100", "--inner-steps", "15", "--outer-steps", "200", "--log-every", "3", "--checkpoint-every", "20",
        "--dtype", "float64", "--threads", "1", "--seed", "3", "--quiet"]


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    victim, straight = tmp_path / "victim", tmp_path / "straight"
    # both runs at once (2 cores); the straight one is the reference
    ref = subprocess.Popen(bilevel_cmd(*TASK, "--out", str(straight)), env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(bilevel_cmd(*TASK, "--out", str(victim)), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        ckdir = victim / "checkpoints"
        while time.monotonic() < deadline and proc.poll() is None:
            done = sorted(ckdir.glob("step-*.pt")) if ckdir.is_dir() else []
            # at least two checkpoints, then a little more so the kill lands between checkpoints
            if len(done) >= 2 and (victim / "metrics.jsonl").exists():
                time.sleep(0.3)
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed: make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (victim / "summary.json").exists()
    killed_lines = len(lines(victim))
    assert 0 < killed_lines < 67

    p = run("run", "--resume", str(victim), "--quiet")
    assert p.returncode == 0, p.stderr
    out, err = ref.communicate(timeout=240)
    assert ref.returncode == 0, err

    a, b = comparable_lines(victim), comparable_lines(straight)
    assert [r["step"] for r in a] == [0, *range(3, 201, 3), 200]
    assert a == b  # same lines, bitwise, no duplicated or missing ones
    assert comparable_summary(victim) == comparable_summary(straight)
    assert sorted(p.name for p in (victim / "checkpoints").glob("*.pt")) == ["step-000180.pt", "step-000200.pt"]
    assert not list((victim / "checkpoints").glob("*.tmp"))  # no temp files left behind
