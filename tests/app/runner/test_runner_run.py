"""``bilevel.app.run.runner``: run_task files, logging schedule, resume hooks, compare and the demo table (in-process)."""
import json

import pytest
import yaml

from bilevel.app.run import plots
from bilevel.app.run.runner import TaskRunner, compare_runs, demo_table, markdown_table, run_task

FAKE = "runner_fake_task"
SUMMARY_KEYS = {"test_accuracy", "f1", "precision", "recall", "upper_final", "wall_seconds", "peak_rss_mb",
                "method", "task", "outer_steps"}


def lines(d):
    return [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]


def test_run_task_writes_config_metrics_summary_and_curves(tmp_path):
    out = tmp_path / "run"
    summary = run_task("fake", {"outer_steps": 7, "log_every": 3, "method": "iaptt"}, out, quiet=True,
                       task_module=FAKE)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["method"] == "iaptt" and summary["task"] == "fake" and summary["outer_steps"] == 7
    assert json.loads((out / "summary.json").read_text()) == summary
    recs = lines(out)
    assert [r["step"] for r in recs] == [0, 3, 6, 7]  # step 0: the task's metrics at x0
    for r in recs:
        keys = {"step", "time", "eval_time", "accuracy", "f1"} | ({"upper", "lower", "grad_norm"} if r["step"] else set())
        assert keys <= set(r)
        assert 0 <= r["eval_time"] <= r["time"]
    assert recs[-1]["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["outer_steps"] == 7 and saved["task"] == "fake" and saved["dim"] == 4


def test_existing_run_directory_needs_overwrite(tmp_path):
    run_task("fake", {"outer_steps": 1}, tmp_path, quiet=True, task_module=FAKE)
    with pytest.raises(ValueError, match="already holds a run.*--overwrite"):
        run_task("fake", {"outer_steps": 1}, tmp_path, quiet=True, task_module=FAKE)
    run_task("fake", {"outer_steps": 2, "log_every": 1}, tmp_path, quiet=True, task_module=FAKE, overwrite=True)
    assert len(lines(tmp_path)) == 3  # steps 0, 1, 2


def test_bad_config_is_rejected_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown option.*nope"):
        run_task("fake", {"nope": 1}, tmp_path / "r", task_module=FAKE)
    assert not (tmp_path / "r").exists()


def test_state_dict_continues_a_run_exactly(tmp_path):
    conf = {"outer_steps": 6, "log_every": 2, "method": "iaptt", "dtype": "float64"}
    straight = run_task("fake", conf, tmp_path / "a", quiet=True, task_module=FAKE)
    first = TaskRunner("fake", conf, tmp_path / "b", quiet=True, task_module=FAKE)
    first.setup()
    for _ in range(3):
        first.step()
    state = first.state_dict()
    first.step()  # a step after the checkpoint whose line must disappear
    first.close()
    second = TaskRunner("fake", conf, tmp_path / "b", quiet=True, task_module=FAKE)
    second.setup(resume=True)
    second.load_state_dict(state)
    resumed = second.execute()
    assert resumed["upper_final"] == straight["upper_final"]
    a, b = lines(tmp_path / "a"), lines(tmp_path / "b")
    assert [r["step"] for r in b] == [0, 2, 4, 6]
    for ra, rb in zip(a, b):
        wall = ("time", "eval_time")
        assert {k: v for k, v in ra.items() if k not in wall} == {k: v for k, v in rb.items() if k not in wall}


def test_compare_runs_table_and_figure(tmp_path):
    for m in ("rhg", "fhg"):
        run_task("fake", {"method": m, "outer_steps": 4}, tmp_path / m, quiet=True, task_module=FAKE)
    table, path = compare_runs([tmp_path / "rhg", tmp_path / "fhg"], out=tmp_path / "cmp.png")
    rows = table.splitlines()
    assert rows[0].startswith("| run | method | task | test_accuracy | f1 | precision | recall |")
    assert rows[0].endswith("| upper_final | wall_seconds |") and len(rows) == 4
    assert rows[2].startswith("| rhg | rhg | fake |") and rows[3].startswith("| fhg | fhg | fake |")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown metric.*nope; the runs logged: upper, lower"):
        compare_runs([tmp_path / "rhg"], metrics=["nope"])
    with pytest.raises(ValueError, match="not a run directory"):
        compare_runs([tmp_path / "missing"])


def test_demo_table_runs_each_method(tmp_path):
    table = demo_table(tmp_path, methods=("rhg", "bda"), task_module=FAKE, outer_steps=2, inner_steps=3)
    rows = table.splitlines()
    assert rows[0] == "| method | test_accuracy | f1 | wall_seconds |"
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["rhg", "bda"]
    assert (tmp_path / "bda" / "summary.json").exists()
    with pytest.raises(ValueError, match="methods="):
        demo_table(tmp_path, method="rhg", task_module=FAKE)


def test_helpers():
    assert markdown_table([{"a": 1, "b": 0.123456, "c": None}], ["a", "b", "c", "d"]).splitlines()[-1] == \
        "| 1 | 0.1235 | - | - |"
    recs = [{"step": 1, "upper": 1.0, "acc": 0.5, "info": {"k": 1}}, {"step": 2, "upper": None, "f1": 0.1}]
    assert plots.task_metrics(recs) == ["acc", "f1"]
