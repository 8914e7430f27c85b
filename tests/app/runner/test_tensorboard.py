"""``tensorboard: DIR``: the event files, read back as TensorBoard loads them, equal metrics.jsonl -- for a run in
one session and for a run killed after a checkpoint and resumed (the events past the checkpoint are purged)."""
import json
import math

import pytest

from bilevel.app.run.runner import TaskRunner, resume_run, run_task
from bilevel.app.run.tensorboard import TensorBoardLog, read_scalars, scalars

pytest.importorskip("tensorboard")

TOY = {"problem": "bda", "method": "rhg", "inner_steps": 4, "outer_steps": 23, "log_every": 2, "dtype": "float64"}


def _expected(run_dir):
    """name -> {step: value} of every numeric entry of metrics.jsonl."""
    out = {}
    for text in (run_dir / "metrics.jsonl").read_text().splitlines():
        line = json.loads(text)
        for name, value in scalars(line):
            out.setdefault(name, {})[int(line["step"])] = value
    return out


def _same(events, expected):
    assert set(events) == set(expected)
    for name, by_step in expected.items():
        assert set(events[name]) == set(by_step), name
        for step, value in by_step.items():  # event files store float32
            assert events[name][step] == pytest.approx(value, rel=1e-6, abs=1e-30, nan_ok=True), (name, step)


def test_events_equal_metrics_jsonl(tmp_path):
    tb = tmp_path / "tb"
    run_task("toy", dict(TOY, tensorboard=str(tb)), tmp_path / "run", quiet=True)
    events = read_scalars(tb)
    _same(events, _expected(tmp_path / "run"))
    assert {"upper", "grad_norm", "x"} <= set(events) and sorted(events["upper"])[-1] == 23


def test_a_resumed_run_keeps_its_events_equal_to_metrics_jsonl(tmp_path):
    tb = tmp_path / "tb"
    run_dir = tmp_path / "run"
    r = TaskRunner("toy", dict(TOY, tensorboard=str(tb)), run_dir, quiet=True, checkpoint_every=5)
    r.setup()
    for _ in range(17):  # checkpoints at 5, 10, 15; lines of steps 16 written past the last one
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    assert max(read_scalars(tb)["upper"]) == 16  # the killed session's events reach past the checkpoint
    resume_run(run_dir, quiet=True)
    _same(read_scalars(tb), _expected(run_dir))


def test_bad_values_and_nested_metrics():
    with pytest.raises(ValueError, match="tensorboard must be a directory path"):
        TensorBoardLog(3)
    got = dict(scalars({"step": 4, "a": 1, "b": True, "c": "text", "d": {"e": 2.5}, "f": [1, 2], "g": math.inf}))
    assert got == {"a": 1.0, "b": 1.0, "d/e": 2.5, "g": math.inf}


def test_only_rank_0_writes_events(tmp_path):
    """Every rank of a distributed run builds a runner; ranks other than 0 write to a scratch directory, and must
    not write TensorBoard events into the shared DIR either."""
    from bilevel.app.launch import DistributedTaskRunner
    from bilevel.parallel import DistContext

    config = dict(TOY, tensorboard=str(tmp_path / "tb"))
    main_rank = DistributedTaskRunner("toy", config, tmp_path / "r0", ctx=DistContext(rank=0, world_size=2))
    other = DistributedTaskRunner("toy", config, tmp_path / "r1", ctx=DistContext(rank=1, world_size=2))
    assert main_rank.tensorboard is not None and other.tensorboard is None
    other._cleanup()
