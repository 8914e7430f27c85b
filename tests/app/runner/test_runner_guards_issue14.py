"""No lost run (issue 14): divergence caught from the first step, the inner loop's warning text, a full disk,
``--resume`` of a finished run with missing files, SIGTERM / SIGINT, stale temporary files."""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run import plots
from bilevel.app.run import metrics as metrics_module
from bilevel.app.run.guards import EXIT_DIVERGED, DivergenceError, GuardOptions, Guards, StopSignals
from bilevel.app.run.runner import run_task
from cli_testutils import main

HERE = Path(__file__).resolve().parent
FAKE = ["--task-module", "runner_fake_task"]
PNG = b"\x89PNG\r\n\x1a\n"
WALL_LINE = ("time", "eval_time")
WALL_SUMMARY = ("loop_seconds", "wall_seconds", "peak_rss_mb")
# the digits run of the issue, tiny
DIGITS = ["run", "hyperclean", "--dataset", "digits", "--train-size", "50", "--val-size", "50", "--test-size", "50",
          "--inner-steps", "5", "--outer-steps", "4", "--log-every", "1", "--threads", "1", "--quiet"]


def metric_lines(d):
    """metrics.jsonl parsed line by line (every line must be valid JSON)."""
    return [json.loads(s) for s in (Path(d) / "metrics.jsonl").read_text().splitlines()]


def without(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def env(**extra):
    return dict(os.environ, PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **extra)


# ------------------------------------------------------------------------------------------ 1. divergence
def test_inner_lr_1e6_on_digits_stops_at_the_first_step_with_exit_3(tmp_path, capsys):
    out = tmp_path / "lr1e6"
    code, _, err = main([*DIGITS, "--inner-lr", "1e6", "--out", str(out)], capsys)
    assert code == EXIT_DIVERGED == 3, err
    assert "method 'rhg' stopped at outer step 1 of 4: the inner loop diverged" in err
    assert "lower inner_lr" in err
    metric_lines(out)  # intact: every line written (if any) is valid JSON
    assert not (out / "summary.json").exists()
    # the same run with a sane step size is not stopped
    code, _, err = main([*DIGITS, "--inner-lr", "0.3", "--out", str(tmp_path / "ok")], capsys)
    assert code == 0, err


def test_an_inner_loop_diverging_after_some_steps_keeps_the_metrics_written_before(tmp_path, capsys):
    # lower 1/2 ||y - A x||^2 (Hessian ~ I): inner_lr 5 multiplies the gradient by ~4 per inner step; at step 1
    # y0 = A x0 is optimal (nothing moves), from step 2 on the inner loop explodes
    out = tmp_path / "late"
    code, _, err = main(["run", "hyperclean", *FAKE, "--inner-lr", "5", "--log-every", "1", "--dtype", "float64",
                         "--checkpoint-every", "1", "--quiet", "--out", str(out)], capsys)
    assert code == 3, err
    assert "stopped at outer step 2 of 6: the inner loop diverged: it raised the lower objective from" in err
    recs = metric_lines(out)
    assert recs and recs[-1]["step"] == 1  # the lines of step 1 (and before) are kept, valid JSON
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000001.pt"]
    # --inner-divergence-factor 0 turns the check off: the run goes on
    code, _, err = main(["run", "hyperclean", *FAKE, "--inner-lr", "5", "--inner-divergence-factor", "0",
                         "--dtype", "float64", "--quiet", "--out", str(tmp_path / "off")], capsys)
    assert code == 0, err
    # healthy runs are not stopped; bda's inner loop leaves the lower optimum on purpose (f and ||grad_y f|| grow
    # at step 1, the core flags it as inner_diverged): f rises a little, not a thousandfold
    for method in ("rhg", "bda", "iaptt", "bvfim", "cg"):
        summary = run_task("hyperclean", {"method": method, "method_options": {}, "dtype": "float64"},
                           tmp_path / method, quiet=True, task_module="runner_fake_task", checkpoint_every=0)
        assert summary["outer_steps"] == 6


def test_guards_inner_divergence_unit():
    g = Guards("rhg", GuardOptions())
    g.set_reference(2.0, 1.0)  # F_0, f_0 at (x0, y0)
    calls = []

    def start(value):
        def f():
            calls.append(value)
            return value
        return f

    healthy = {"upper": 1.5, "grad_norm": 1.0, "lower": 0.5, "lower_grad_norm_first": 1.0,
               "lower_grad_norm_last": 0.1}
    g.check(1, 9, healthy, lower_start=start(1.0))
    assert calls == []  # f(x, y_start) is not evaluated for a step that looks fine
    # the gradient grew but f barely rose: evaluated, not a divergence (bda-like)
    g.check(2, 9, dict(healthy, lower=1.2, lower_grad_norm_last=3.0, inner_diverged=True), lower_start=start(1.0))
    assert calls == [1.0]
    # f rose 1e5-fold from where the inner loop started
    with pytest.raises(DivergenceError, match="outer step 3 of 9: the inner loop diverged: it raised the lower "
                                              "objective from f\\(x, y_start\\) = 1 to f\\(x, y_K\\) = 100000"):
        g.check(3, 9, dict(healthy, lower=1e5, lower_grad_norm_last=3.0), lower_start=start(1.0))
    # without lower_start, f_0 decides; the magnitude check uses F_0, not the first step's upper
    with pytest.raises(DivergenceError, match="f_0 = f\\(x0, y0\\) = 1"):
        g.check(3, 9, dict(healthy, lower=5e3))
    g2 = Guards("rhg", GuardOptions(divergence_factor=10))
    g2.set_reference(0.5, 0.0)
    with pytest.raises(DivergenceError, match="outer step 1 of 9: the upper objective diverged.*max\\(\\|F_0\\|, 1\\)"):
        g2.check(1, 9, {"upper": 11.0, "grad_norm": 1.0})
    # 0 turns the inner check off; the references survive a checkpoint
    off = Guards("rhg", GuardOptions(inner_divergence_factor=0))
    off.set_reference(2.0, 1.0)
    off.check(1, 9, dict(healthy, lower=1e9, lower_grad_norm_last=1e3), lower_start=start(1.0))
    state = json.loads(json.dumps(g.state_dict()))
    g3 = Guards("rhg", GuardOptions())
    g3.load_state_dict(state)
    assert (g3.reference, g3.lower_reference) == (2.0, 1.0)


# ------------------------------------------------------------------------------------------ 2. warning text
def test_stationarity_warning_says_lower_inner_lr_when_the_gradient_grew():
    g = Guards("rhg", GuardOptions(), log=lambda m: None)
    [grew] = g.diagnose(4, {"lower_grad_norm_first": 0.25, "lower_grad_norm_last": 1.31})
    assert "inner loop diverging or oscillating at outer step 4" in grew
    assert "last/first = 5.24 > 1 (lower inner_lr)" in grew and "raise" not in grew
    [slow] = g.diagnose(5, {"lower_grad_norm_first": 1.0, "lower_grad_norm_last": 0.8})
    assert "inner loop far from stationarity at outer step 5" in slow
    assert "last/first = 0.8 > 0.5 (raise inner_steps or inner_lr)" in slow and "lower inner_lr" not in slow
    assert g.diagnose(6, {"lower_grad_norm_first": 1.0, "lower_grad_norm_last": 0.1}) == []
    assert g.summary() == {"stationarity": 2}


# ------------------------------------------------------------------------------------------ 3. disk full
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on an open file raises it: no file name


class _FullAfter:
    """A metrics file on a disk that fills up after ``n`` lines."""

    def __init__(self, fh, n):
        self._fh, self._n = fh, n

    def write(self, text):
        if self._n <= 0:
            _enospc()
        self._n -= 1
        return self._fh.write(text)

    def __getattr__(self, name):
        return getattr(self._fh, name)


@pytest.mark.parametrize("where", ["metrics", "checkpoint", "curves", "summary"])
def test_a_full_disk_is_one_error_line_and_the_run_resumes(where, tmp_path, capsys, monkeypatch):
    out = tmp_path / where
    if where == "metrics":
        real_open = open

        def full_open(path, mode="r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            return _FullAfter(fh, 2) if str(path).endswith("metrics.jsonl") and "a" in mode else fh

        monkeypatch.setattr(metrics_module, "open", full_open, raising=False)
        path = out / "metrics.jsonl"
    elif where == "checkpoint":
        monkeypatch.setattr(ckpt, "save", _enospc)
        path = out / "checkpoints" / "step-000002.pt"
    elif where == "curves":
        monkeypatch.setattr(plots, "plot_curves", _enospc)
        path = out / "curves.png"
    else:
        real_write = ckpt.atomic_write_bytes

        def full_for_summary(target, data):
            return _enospc() if Path(target).name == "summary.json" else real_write(target, data)

        monkeypatch.setattr(ckpt, "atomic_write_bytes", full_for_summary)
        path = out / "summary.json"
    argv = ["run", "hyperclean", *FAKE, "--dtype", "float64", "--checkpoint-every", "2", "--quiet", "--out", str(out)]
    code, _, err = main(argv, capsys)
    assert code == 1
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("bilevel run:")]
    assert line == (f"bilevel run: error: {path}: No space left on device (ENOSPC); free some space, then continue "
                    f"with: bilevel run --resume {out}")
    metric_lines(out)  # what was written is intact
    monkeypatch.undo()  # space freed: the resume finishes the run
    code, _, err = main(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert metric_lines(out)[-1]["step"] == 6 and (out / "summary.json").exists()
    assert (out / "curves.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------ 4. resume finishes
def test_resume_of_a_finished_run_writes_the_missing_files_without_running_steps(tmp_path, capsys):
    out = tmp_path / "done"
    run_task("hyperclean", {"dtype": "float64"}, out, quiet=True, task_module="runner_fake_task", checkpoint_every=2)
    metrics, summary = (out / "metrics.jsonl").read_bytes(), (out / "summary.json").read_bytes()
    (out / "curves.png").unlink()
    code, _, err = main(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert (out / "metrics.jsonl").read_bytes() == metrics and (out / "summary.json").read_bytes() == summary
    # summary.json lost too (stopped while writing it): both come back from the final checkpoint, no step rerun
    (out / "curves.png").unlink()
    (out / "summary.json").unlink()
    code, _, err = main(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert (out / "metrics.jsonl").read_bytes() == metrics  # same lines, same wall-clock times: nothing rerun
    assert without(json.loads((out / "summary.json").read_text()), WALL_SUMMARY) == \
        without(json.loads(summary), WALL_SUMMARY)
    assert (out / "curves.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------ 5. signals
SLOW = ["run", "hyperclean", "--task-module", "runner_slow_task", "--outer-steps", "30", "--log-every", "1",
        "--checkpoint-every", "1000", "--dtype", "float64", "--threads", "1", "--quiet"]
SLOW_CONFIG = {"outer_steps": 30, "log_every": 1, "dtype": "float64", "threads": 1}


def _straight(tmp_path):
    ref = tmp_path / "straight"
    run_task("hyperclean", SLOW_CONFIG, ref, quiet=True, task_module="runner_slow_task", checkpoint_every=1000)
    return ref


def _count_lines(path):
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slow
def test_sigterm_saves_the_last_completed_step_and_the_resume_matches_a_straight_run(tmp_path, capsys):
    out = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, "-m", "bilevel", *SLOW, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(RUNNER_SLOW_TASK_SLEEP="0.01"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and _count_lines(out / "metrics.jsonl") < 4:
            time.sleep(0.02)
        seen = _count_lines(out / "metrics.jsonl")
        assert proc.poll() is None, "the run ended before the signal: make it slower"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert f"resume with: bilevel run --resume {out}" in err
    [ck] = ckpt.list_checkpoints(out)
    t = int(ckpt.load(ck)["t"])
    assert f"interrupted by SIGTERM after {t} of 30 outer steps; saved the last completed step (outer step {t}) " \
           f"to {ck}" in err
    done = [r["step"] for r in metric_lines(out) if r["step"] > 0]
    assert seen - 1 <= t and done[-1] in (t, t + 1)  # the step in flight (if any) is not in the checkpoint
    assert not (out / "summary.json").exists()

    code, _, err = main(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    ref = _straight(tmp_path)
    assert [without(r, WALL_LINE) for r in metric_lines(out)] == [without(r, WALL_LINE) for r in metric_lines(ref)]
    assert without(json.loads((out / "summary.json").read_text()), WALL_SUMMARY) == \
        without(json.loads((ref / "summary.json").read_text()), WALL_SUMMARY)


@pytest.mark.slow
def test_sigint_in_the_middle_of_a_step_exits_130_with_the_previous_step_saved(tmp_path):
    out = tmp_path / "ctrl-c"
    # the task sends itself SIGINT inside outer step 5 (t = 4), so steps 1-4 are the completed ones
    p = subprocess.run([sys.executable, "-m", "bilevel", *SLOW, "--out", str(out)], capture_output=True, text=True,
                       timeout=240, env=env(RUNNER_SLOW_TASK_SIGNAL_AT="4:SIGINT"))
    assert p.returncode == 130, p.stderr
    assert "interrupted by SIGINT after 4 of 30 outer steps; saved the last completed step (outer step 4)" in p.stderr
    assert f"resume with: bilevel run --resume {out}" in p.stderr and "Traceback" not in p.stderr
    assert [c.name for c in ckpt.list_checkpoints(out)] == ["step-000004.pt"]


def test_signal_handlers_are_restored_after_a_run(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run_task("hyperclean", {"outer_steps": 2}, tmp_path / "r", quiet=True, task_module="runner_fake_task")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with StopSignals() as stop:  # a first signal inside deferred() waits for check()
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert stop.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="SIGTERM") as info:
            stop.check()
        assert info.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) == before[0]
    again = pickle.loads(pickle.dumps(info.value))  # survives a process pool (bilevel reproduce's workers)
    assert (again.signum, str(again)) == (signal.SIGTERM, str(info.value))


# ------------------------------------------------------------------------------------------ 6. stale temp files
def test_stale_temporary_files_of_a_killed_write_are_removed_on_resume_and_on_a_new_run(tmp_path, capsys):
    out = tmp_path / "r"
    run_task("hyperclean", {"dtype": "float64"}, out, quiet=True, task_module="runner_fake_task", checkpoint_every=2)
    (out / "summary.json").unlink()

    def leftovers():  # what a kill -9 inside atomic_write_bytes leaves: mkstemp's file, never renamed
        made = []
        for target in (out / "checkpoints" / "step-000008.pt", out / "summary.json"):
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.write(fd, b"half a file")
            os.close(fd)
            made.append(Path(name))
        return made

    stale = leftovers()
    keep = [out / "notes.tmp", out / "checkpoints" / "keep.txt"]
    for k in keep:
        k.write_text("mine")
    code, _, err = main(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and all(k.exists() for k in keep)
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))

    stale = leftovers()
    run_task("hyperclean", {"dtype": "float64"}, out, quiet=True, task_module="runner_fake_task", overwrite=True)
    assert not any(p.exists() for p in stale)
    assert ckpt.remove_stale_temp_files(tmp_path / "missing") == []
