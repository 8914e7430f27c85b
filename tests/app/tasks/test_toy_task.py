import math

import pytest
import torch

from bilevel.app.tasks import toy
from task_testutils import run_steps


@pytest.mark.parametrize("problem, overrides", [
    ("bda", {}),
    ("bda", dict(method="rhg", y0="0,0", x0=0.5)),
    ("iaptt", dict(method="iaptt", inner_steps=20, inner_lr=0.002, outer_lr=0.3, outer_optimizer="adam")),
])
def test_build_and_steps(problem, overrides):
    cfg = toy.config_with_defaults(problem=problem, **overrides)
    run = toy.build(cfg)
    assert run.x0.shape == (1,) and run.y0.shape == ((2,) if problem == "bda" else (1,))
    assert "x_bounds" in run.loop_options
    loop = run_steps(run, cfg, 5)
    ev = run.evaluate(loop)
    assert all(math.isfinite(v) for v in ev.values())
    s = run.summarize(loop)
    for key in ("x_final", "distance_to_solution", "upper_gap", "lower_gap", "y_distance_to_solution"):
        assert math.isfinite(s[key]), key
    assert s["distance_to_solution"] == pytest.approx(abs(s["x_final"] - s["x_star"]))
    lo, hi = run.loop_options["x_bounds"]
    assert lo <= s["x_final"] <= hi


def test_bda_moves_towards_solution():
    cfg = toy.config_with_defaults(outer_steps=40)
    run = toy.build(cfg)
    loop = run_steps(run, cfg, 40)
    assert run.summarize(loop)["distance_to_solution"] < 0.5  # from x0 = 0, distance 1


@pytest.mark.parametrize("bad, match", [
    (dict(problem="rosenbrock"), "problem must be one of"),
    (dict(y0="1"), "2 finite number"),
    (dict(y0="a,b"), "comma-separated"),
    (dict(x0=500.0), "x0 must lie"),
    (dict(problem="iaptt", y0="3"), r"must lie in \[-2.0, 2.0\]"),
    (dict(dtype="half"), "dtype"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        toy.build(toy.config_with_defaults(**bad))


def test_defaults_are_the_bda_papers_settings():
    cfg = toy.config_with_defaults()
    # BDA Sec. 5.1: s_l = 0.2, s_u = 0.7, K = 16, x0 = 0, y0 = (2, 2)
    assert (cfg["method"], cfg["inner_lr"], cfg["inner_steps"]) == ("bda", 0.2, 16)
    assert cfg["method_options"] == {"upper_lr": 0.7}
    run = toy.build(cfg)
    assert run.x0.tolist() == [0.0] and run.y0.tolist() == [2.0, 2.0]
    # the default upper_lr belongs to the default method: methods without it do not get it
    assert toy.config_with_defaults(method="rhg")["method_options"] == {}
    assert toy.config_with_defaults(method="bigsam")["method_options"] == {"upper_lr": 0.7}


def test_default_cli_run_reaches_the_bda_toy_solution(tmp_path):
    """`bilevel run toy` with its defaults ends within 0.1 of x* = 1 (BDA Fig. 1; 1.35 without s_u = 0.7)."""
    import json

    from bilevel.app.cli import main

    out = tmp_path / "toy"
    assert main(["run", "toy", "--out", str(out), "--quiet", "--checkpoint-every", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "bda" and summary["outer_steps"] == 200
    assert abs(summary["x_final"] - 1.0) < 0.1, summary["x_final"]
