"""Numerical guards: NaN/inf and divergence stop a run (exit 3, last good checkpoint kept); diagnostics become
warnings in the log and in metrics.jsonl; bf16 autocast."""
import json
import logging

import pytest
import torch

from bilevel.app.run import checkpoint as ckpt
from bilevel import hypergrad
from bilevel.app.run.guards import EXIT_DIVERGED, DivergenceError, GuardOptions, Guards, autocast_objectives
from bilevel.app.run.runner import TaskRunner, run_task
from bilevel.app.tasks import hyperclean

from resume_test_helpers import main

GUARD = ["--task-module", "resume_guard_task", "--dtype", "float64", "--quiet"]


def records(d):
    return [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]


def test_nan_in_the_inner_loop_stops_with_exit_3_and_keeps_the_last_good_state(tmp_path, capsys):
    out = tmp_path / "nan"
    code, _, err = main(["run", "hyperclean", *GUARD, "--fault", "nan", "--break-at", "6", "--checkpoint-every", "4",
                         "--out", str(out)], capsys)
    assert code == EXIT_DIVERGED == 3
    assert "method 'rhg' hit nan/inf at outer step 6 of 12" in err
    assert "at inner step 1 of 10" in err                        # from the core's NonFiniteError
    assert "last finite values (outer step 5): upper=" in err and "grad_norm=" in err
    assert "saved the last good state (outer step 5)" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000004.pt", "step-000005.pt"]
    assert [r["step"] for r in records(out)] == [0, 2, 4]       # partial metrics kept
    assert not (out / "summary.json").exists()


def test_exploding_upper_objective_stops_with_exit_3(tmp_path, capsys):
    out = tmp_path / "boom"
    code, _, err = main(["run", "hyperclean", *GUARD, "--fault", "explode", "--break-at", "4", "--checkpoint-every", "2",
                         "--out", str(out)], capsys)
    assert code == 3
    assert "method 'rhg' stopped at outer step 4 of 12: the upper objective diverged" in err
    assert "divergence_factor 1e+06" in err and "last finite values (outer step 3)" in err
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000002.pt", "step-000003.pt"]
    # a larger factor lets the same run finish
    code, _, err = main(["run", "hyperclean", *GUARD, "--fault", "explode", "--break-at", "4", "--divergence-factor", "1e12",
                         "--out", str(tmp_path / "ok")], capsys)
    assert code == 0, err


def test_divergence_error_from_python_names_method_and_values(tmp_path):
    r = TaskRunner("g", {"fault": "explode", "break_at": 2, "dtype": "float64"}, tmp_path / "r",
                   quiet=True, task_module="resume_guard_task", checkpoint_every=0)
    with pytest.raises(DivergenceError) as info:
        r.execute()
    assert info.value.method == "rhg" and info.value.step == 2 and info.value.last_good["step"] == 1


def test_cg_non_convergence_is_a_warning_in_log_and_metrics(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bilevel.app.run.runner"):
        run_task("g", {"method": "cg", "method_options": {"cg_steps": 1, "cg_tol": 1e-14}, "dtype": "float64",
                       "curvature": 1.0, "outer_steps": 4}, tmp_path / "cg", quiet=True,
                 task_module="resume_guard_task", checkpoint_every=0)
    assert "cg: linear solver did not converge at outer step 1 (relative residual" in caplog.text
    recs = records(tmp_path / "cg")[1:]  # after the step-0 line (x0, no step yet)
    assert all(any("linear solver did not converge" in w for w in r["warnings"]) for r in recs)
    assert recs[0]["info"]["solver_converged"] is False
    summary = json.loads((tmp_path / "cg" / "summary.json").read_text())
    assert summary["warnings"]["solver"] == 4


def test_inner_loop_far_from_stationarity_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bilevel.app.run.runner"):
        run_task("g", {"inner_steps": 1, "inner_lr": 0.05, "dtype": "float64", "outer_steps": 4}, tmp_path / "k1",
                 quiet=True, task_module="resume_guard_task", checkpoint_every=0)
    assert "inner loop far from stationarity at outer step 2" in caplog.text  # step 1: grad 0 at y0
    recs = records(tmp_path / "k1")
    assert "(2 steps since the previous line)" in recs[2]["warnings"][0]  # recs[0]: step 0
    # a well-converged inner loop has no warnings field at all
    run_task("g", {"dtype": "float64", "outer_steps": 4}, tmp_path / "ok", quiet=True,
             task_module="resume_guard_task", checkpoint_every=0)
    assert all("warnings" not in r for r in records(tmp_path / "ok"))


def test_bvfim_barrier_backtracking_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bilevel.app.run.runner"):
        run_task("g", {"method": "bvfim", "method_options": {"y_lr": 50.0}, "dtype": "float64",
                       "outer_steps": 2}, tmp_path / "bv", quiet=True, task_module="resume_guard_task",
                 checkpoint_every=0, guards=GuardOptions(stationarity_ratio=0))
    assert "bvfim: barrier step halved" in caplog.text and "nearly infeasible" in caplog.text
    assert any("barrier step halved" in w for w in records(tmp_path / "bv")[1]["warnings"])  # [0]: step 0


def test_guard_unit_checks():
    g = Guards("rhg", GuardOptions(divergence_factor=10))
    g.check(1, 5, {"upper": 0.5, "grad_norm": 1.0})          # reference max(|0.5|, 1) = 1
    g.check(2, 5, {"upper": 9.0, "grad_norm": 1.0})
    with pytest.raises(DivergenceError, match="outer step 3 of 5: the upper objective diverged"):
        g.check(3, 5, {"upper": 11.0, "grad_norm": 1.0})
    with pytest.raises(DivergenceError, match=r"non-finite values \(upper=nan/inf"):
        g.check(3, 5, {"upper": float("nan"), "grad_norm": 1.0})
    msgs = g.diagnose(3, {"backtracks": 0, "y_steps": 2, "gap": -1.0})
    assert any("barrier infeasible" in m for m in msgs)
    with pytest.raises(ValueError, match="divergence_factor"):
        GuardOptions(divergence_factor=-1)


def test_bf16_autocast_objectives_and_run(tmp_path, capsys):
    c = hyperclean.config_with_defaults(train_size=60, val_size=60, test_size=60, inner_steps=10)
    run = hyperclean.build(c)
    pair = run.objectives(0)
    kw = dict(method="rhg", inner_steps=10, inner_lr=0.3)
    g32 = hypergrad(*pair, run.x0, run.y0, **kw).grad
    g16 = hypergrad(*autocast_objectives(pair, "bf16"), run.x0, run.y0, **kw).grad
    assert g16.dtype == torch.float32
    rel = float(torch.linalg.vector_norm(g16 - g32) / torch.linalg.vector_norm(g32))
    assert 0 < rel < 0.1
    code, _, err = main(["run", "hyperclean", "--dataset", "digits", "--train-size", "60", "--val-size", "60",
                         "--test-size", "60", "--inner-steps", "5", "--outer-steps", "3", "--precision", "bf16",
                         "--quiet", "--out", str(tmp_path / "bf16")], capsys)
    assert code == 0, err
    code, _, err = main(["run", "hyperclean", "--dtype", "float64", "--precision", "bf16", "--quiet",
                         "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "precision bf16 needs dtype float32" in err
