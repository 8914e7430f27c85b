"""Model selection in the runner (``select_metric`` / ``select_mode`` / ``patience``): the kept state, the early
stop, and a resume that selects exactly as an uninterrupted run."""
import json
import math

import pytest

from bilevel.app.run.runner import TaskRunner, resume_run, run_task
from bilevel.app.run.selection import Selection

TASK = "runner_selection_task"


def lines(d):
    return [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]


def test_selection_unit_rules():
    s = Selection("loss", "min", patience=2)
    assert s.update(0, {"loss": 3.0}, lambda: {"k": 0})
    assert not s.update(1, {"loss": 3.0}, lambda: {"k": 1})  # equal is not an improvement
    assert s.update(2, {"loss": 1.0}, lambda: {"k": 2}) and s.bad == 0
    assert not s.update(3, {"loss": float("nan")}, lambda: {"k": 3})  # NaN never improves
    assert not s.stopped
    assert not s.update(4, {"loss": 2.0}, lambda: {"k": 4})
    assert s.stopped and s.best_step == 2 and s.best_value == 1.0 and s.best_state == {"k": 2}
    m = Selection("acc", "max")
    for step, v in enumerate([0.1, 0.5, 0.4, 0.2, 0.1]):
        m.update(step, {"acc": v}, lambda step=step: {"k": step})
    assert m.best_step == 1 and not m.stopped  # no patience: never stops
    with pytest.raises(ValueError, match="not among the task's evaluated metrics: acc"):
        Selection("loss").update(0, {"acc": 1.0}, dict)
    with pytest.raises(ValueError, match="select_mode must be one of min, max"):
        Selection("loss", "lowest")
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        Selection("loss", patience=0)
    with pytest.raises(ValueError, match="patience needs select_metric"):
        Selection(None, patience=3)


def test_run_keeps_the_best_state_and_stops_after_patience(tmp_path):
    # x_t = t exactly; holdout_loss = (x - 3.3)^2 is smallest at t = 3, then worse at 4 and 5: stop at 5
    s = run_task("sel", {"select_metric": "holdout_loss", "patience": 2}, tmp_path / "a", quiet=True,
                 task_module=TASK)
    assert s["x"] == 3.0 and s["selected_step"] == 3 and s["stopped_early"] and s["steps_run"] == 5
    assert s["outer_steps"] == 5 and s["selected_value"] == pytest.approx(0.09)
    assert [r["x"] for r in lines(tmp_path / "a")] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # without patience the run takes all its steps and is still summarized at the best state
    s = run_task("sel", {"select_metric": "holdout_loss", "outer_steps": 8}, tmp_path / "b", quiet=True,
                 task_module=TASK)
    assert s["x"] == 3.0 and s["steps_run"] == 8 and not s["stopped_early"]
    # max mode and log_every: evaluations at 0, 2, 4, 6; the best of them (by -loss) ... here x itself
    s = run_task("sel", {"select_metric": "x", "select_mode": "max", "outer_steps": 7, "log_every": 2},
                 tmp_path / "c", quiet=True, task_module=TASK)
    assert s["x"] == 7.0 and s["selected_step"] == 7  # the last step is always evaluated
    # selection off: the last state
    s = run_task("sel", {"outer_steps": 6}, tmp_path / "d", quiet=True, task_module=TASK)
    assert s["x"] == 6.0 and "selected_step" not in s


def test_unknown_metric_and_bad_options_are_errors_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="select_metric 'val_loss' is not among.*holdout_loss, x"):
        run_task("sel", {"select_metric": "val_loss"}, tmp_path / "a", quiet=True, task_module=TASK)
    with pytest.raises(ValueError, match="select_mode must be one of min, max"):
        run_task("sel", {"select_metric": "x", "select_mode": "up"}, tmp_path / "b", quiet=True, task_module=TASK)
    with pytest.raises(ValueError, match="patience"):
        run_task("sel", {"select_metric": "x", "patience": 0}, tmp_path / "c", quiet=True, task_module=TASK)


@pytest.mark.parametrize("stop_after", [2, 4, 5])
def test_resume_selects_as_the_uninterrupted_run(tmp_path, stop_after):
    cfg = {"select_metric": "holdout_loss", "patience": 2, "target": 3.3, "dtype": "float64"}
    ref = run_task("sel", cfg, tmp_path / "ref", quiet=True, task_module=TASK)
    r = TaskRunner("sel", cfg, tmp_path / "cut", quiet=True, task_module=TASK, checkpoint_every=1)
    r.setup()
    for _ in range(stop_after):  # killed after `stop_after` steps (the best state, x = 3, may lie behind)
        r.step()
        if r.checkpoint_due():
            r.save_checkpoint()
    r.close()
    s = resume_run(tmp_path / "cut", quiet=True)
    keep = ("x", "selected_step", "selected_value", "stopped_early", "steps_run", "outer_steps")
    assert {k: s[k] for k in keep} == {k: ref[k] for k in keep}
    assert [r["x"] for r in lines(tmp_path / "cut")] == [r["x"] for r in lines(tmp_path / "ref")]
    assert math.isclose(s["selected_value"], (3 - 3.3) ** 2, rel_tol=1e-12)
