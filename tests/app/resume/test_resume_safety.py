"""Issue 14: checkpoints never run code, one writer per run directory, resumes with the recorded number of
processes, and every option is checked before an older run is deleted."""
import hashlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import yaml

from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run.runner import resume_run, run_task

from resume_test_helpers import (bilevel_cmd, comparable_lines, comparable_summary, env, interrupted_toy_run, lines,
                                 main, run)

TOY = {"dtype": "float64", "outer_steps": 12, "log_every": 2, "threads": 1, "method": "bda",
       "method_options": {"upper_lr": 0.7}}


# ------------------------------------------------------------------------------------------ no code from files
class _Planted:
    """Unpickling this calls ``open(path, "w")``: the file appears if the loader runs the pickle's code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_checkpoint(path, marker):
    """A checkpoint file with a valid header and checksum whose payload would create ``marker``."""
    buf = io.BytesIO()
    torch.save({"t": 10, "loop": _Planted(marker)}, buf)
    payload = buf.getvalue()
    header = b"%s %d %s %d\n" % (ckpt.MAGIC, ckpt.VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    path.write_bytes(header + payload)


def _interrupted(tmp_path, name, steps):
    return interrupted_toy_run(TOY, tmp_path / name, steps)


def test_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, caplog):
    marker = tmp_path / "planted"
    newest = tmp_path / "step-000010.pt"
    _crafted_checkpoint(newest, marker)
    with pytest.raises(ckpt.CheckpointError, match=r"step-000010\.pt: not plain data, refused") as info:
        ckpt.load(newest)
    assert "its pickle calls io.open" in str(info.value)  # what the pickle wanted to call (open is io.open)
    assert not marker.exists()

    # resume (Python API): the crafted newest checkpoint is skipped with a warning naming it, the run goes on
    # from the previous one and ends as an uninterrupted run would
    straight = tmp_path / "straight"
    run_task("toy", TOY, straight, quiet=True, checkpoint_every=5)
    victim = _interrupted(tmp_path, "victim", 11)          # checkpoints at 5 and 10
    _crafted_checkpoint(victim / "checkpoints" / "step-000010.pt", marker)
    with caplog.at_level(logging.INFO, logger="bilevel.app.run.runner"):
        resume_run(victim, quiet=True)
    assert not marker.exists()
    text = caplog.text
    assert f"skipping bad checkpoint {victim / 'checkpoints' / 'step-000010.pt'}: not plain data" in text
    assert "step-000005.pt" in text
    assert comparable_lines(victim) == comparable_lines(straight)
    assert comparable_summary(victim) == comparable_summary(straight)


def test_cli_resume_of_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "planted"
    straight = tmp_path / "straight"
    run_task("toy", TOY, straight, quiet=True, checkpoint_every=5)
    victim = _interrupted(tmp_path, "victim", 7)          # one checkpoint, at 5: replaced by the crafted one
    crafted = victim / "checkpoints" / "step-000005.pt"
    _crafted_checkpoint(crafted, marker)
    code, _, err = main(["run", "--resume", str(victim), "--quiet"], capsys)
    assert not marker.exists()
    assert code == 0, err   # refused, then the run starts over from step 0 (no other checkpoint)
    assert f"skipping bad checkpoint {crafted}: not plain data" in err and "starting over from step 0" in err
    assert comparable_lines(victim) == comparable_lines(straight)


def test_checkpoints_hold_plain_data_and_restore_the_rng_exactly(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"not plain data: state\['task'\]\['pos'\] is a numpy.ndarray"):
        ckpt.encode({"t": 1, "task": {"pos": np.zeros(3)}})
    with pytest.raises(ckpt.CheckpointError, match="not plain data: .* is a builtins.object"):
        ckpt.encode({"t": 1, "x": [1, (2, object())]})

    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    state = ckpt.decode(ckpt.encode({"rng": ckpt.rng_state()}))["rng"]  # through a checkpoint's bytes
    draws = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == draws

    # a real run's checkpoint: readable with weights_only=True, nothing but plain data
    run_task("toy", dict(TOY, outer_steps=5), tmp_path / "r", quiet=True, checkpoint_every=5)
    data = (tmp_path / "r" / "checkpoints" / "step-000005.pt").read_bytes()
    state = torch.load(io.BytesIO(data[data.index(b"\n") + 1:]), weights_only=True)
    ckpt.check_plain(state)
    assert isinstance(state["rng"]["numpy"]["key"], torch.Tensor) and state["run_options"]["world_size"] == 1


def test_checkpoint_of_the_old_pickled_format_is_refused_by_version(tmp_path):
    payload = io.BytesIO()
    torch.save({"t": 1}, payload)
    body = payload.getvalue()
    old = b"BILEVEL-CKPT 1 %s %d\n" % (hashlib.sha256(body).hexdigest().encode(), len(body)) + body
    with pytest.raises(ckpt.CheckpointError, match="format version 1, this bilevel reads 2"):
        ckpt.decode(old, "old.pt")


# ------------------------------------------------------------------------------------------ validate first
def test_bad_method_option_value_leaves_the_older_run_untouched(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["run", "toy", "--method", "trhg", "--outer-steps", "4", "--log-every", "2", "--dtype", "float64",
            "--threads", "1", "--checkpoint-every", "2", "--quiet", "--out", str(out)]
    code, _, err = main(base, capsys)
    assert code == 0, err
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {"metrics.jsonl", "summary.json", "config.yaml", "run_options.yaml"} <= {p.name for p in files}
    before = {p: p.read_bytes() for p in files}
    code, _, err = main([*base, "--overwrite", "--opt", "truncate=abc"], capsys)
    assert code == 2
    assert "error: truncate must be an integer, got 'abc'" in err
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert {p: p.read_bytes() for p in files} == before  # byte for byte


# ------------------------------------------------------------------------------------------ one writer
SLOW = ["run", "toy", "--task-module", "resume_slow_task", "--outer-steps", "6", "--pause-at", "3",
        "--checkpoint-every", "1", "--dtype", "float64", "--threads", "1", "--quiet"]


def _steps(out):
    return [json.loads(s)["step"] for s in lines(out)]


def _start(out, gate):
    return subprocess.Popen(bilevel_cmd(*SLOW, "--gate", str(gate), "--out", str(out)), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_paused(proc, out, timeout=120.0):
    """Until the run has written the lines of the steps before its pause (it then holds the lock, waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if (out / "metrics.jsonl").exists() and 2 in _steps(out) and (out / ckpt.LOCK_OWNER_FILE).exists():
            return
        time.sleep(0.05)
    raise AssertionError("the run did not reach its pause")


@pytest.mark.slow
def test_second_writer_and_resume_of_a_running_run_are_refused_naming_the_pid(tmp_path):
    out, gate = tmp_path / "r", tmp_path / "gate"
    first = _start(out, gate)
    try:
        _wait_paused(first, out)
        assert (out / ckpt.LOCK_OWNER_FILE).read_text().split()[0] == str(first.pid)
        config_before, metrics_before = (out / "config.yaml").read_bytes(), (out / "metrics.jsonl").read_bytes()
        # a second run on the same --out, even with --overwrite: refused, nothing deleted
        p = run(*SLOW, "--out", str(out), "--overwrite")
        assert p.returncode == 2, p.stderr
        assert "bilevel run: error: run directory" in p.stderr and f"process {first.pid} holds its lock" in p.stderr
        assert (out / "config.yaml").read_bytes() == config_before
        assert (out / "metrics.jsonl").read_bytes() == metrics_before
        # --resume while the run is still going: refused the same way
        p = run("run", "--resume", str(out), "--quiet")
        assert p.returncode == 2, p.stderr
        assert f"bilevel run: error: run directory {str(out)!r} is in use: process {first.pid}" in p.stderr
        assert first.poll() is None
        gate.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    steps = _steps(out)
    assert [s for s in steps if s > 0] == [1, 2, 3, 4, 5, 6] and len(set(steps)) == len(steps)  # intact
    assert json.loads((out / "summary.json").read_text())["outer_steps"] == 6
    assert not (out / ckpt.LOCK_OWNER_FILE).exists()  # released at the end


@pytest.mark.slow
def test_kill_9_releases_the_lock_and_resume_then_works(tmp_path):
    out, gate = tmp_path / "r", tmp_path / "gate"
    first = _start(out, gate)
    try:
        _wait_paused(first, out)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert (out / ckpt.LOCK_OWNER_FILE).read_text().split()[0] == str(first.pid)  # stale, but no lock any more
    gate.touch()
    p = run("run", "--resume", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    straight = tmp_path / "straight"
    p = run(*SLOW, "--gate", str(gate), "--out", str(straight))
    assert p.returncode == 0, p.stderr
    assert comparable_lines(out) == comparable_lines(straight)
    assert comparable_summary(out) == comparable_summary(straight)


def test_lock_in_process_names_the_holder_and_is_released(tmp_path):
    lock = ckpt.RunLock(tmp_path).acquire()
    with pytest.raises(ckpt.RunLockedError, match=f"process {os.getpid()} holds its lock") as info:
        ckpt.RunLock(tmp_path).acquire()
    assert info.value.pid == os.getpid()
    lock.release()
    assert not (tmp_path / ckpt.LOCK_OWNER_FILE).exists()
    with ckpt.RunLock(tmp_path):
        pass


# ------------------------------------------------------------------------------------------ world size
def test_resume_with_another_number_of_processes_is_refused(tmp_path, capsys):
    victim = _interrupted(tmp_path, "victim", 7)
    options = yaml.safe_load((victim / "run_options.yaml").read_text())
    assert options["world_size"] == 1
    metrics = (victim / "metrics.jsonl").read_bytes()
    # a one-process run resumed on 2 processes: refused before torchrun is started
    code, _, err = main(["run", "--resume", str(victim), "--nproc", "2", "--quiet"], capsys)
    assert code == 2 and "the run was made on 1" in err and f"`bilevel run --resume {victim}` (one process" in err
    # a run recorded as made on 2 processes, resumed on one
    options["world_size"] = 2
    (victim / "run_options.yaml").write_text(yaml.safe_dump(options))
    code, _, err = main(["run", "--resume", str(victim), "--quiet"], capsys)
    assert code == 2
    assert "bilevel run: error: cannot resume" in err and "on 1 process(es): the run was made on 2" in err
    assert f"`bilevel run --resume {victim} --nproc 2`" in err
    with pytest.raises(ValueError, match="the run was made on 2"):
        resume_run(victim)
    assert (victim / "metrics.jsonl").read_bytes() == metrics and not (victim / "summary.json").exists()
