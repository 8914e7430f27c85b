"""Fair tuning of the reproductions (issue 16): one grid of the same size per method, chosen on the held-out
score of seed 0, the other seeds run at the choice; and the warm-started reference points."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bilevel.api import OuterLoop
from bilevel.app.reproduce import _hyperclean as hc
from bilevel.app.reproduce import bda_table2, bvfim_fig2, common, fewshot, iaptt_table3, improved_table1
from bilevel.app.reproduce.common import Context, Grid, Job, tune


class FakeContext(Context):
    """Runs nothing: a job's summary is a made-up function of its configuration."""

    def grid(self, experiment, jobs):
        self.calls.append([(j.method, j.seed, j.variant) for j in jobs])
        out = []
        self.last_jobs.append(out)
        for j in jobs:
            c = j.config
            if c["method_options"].get("truncate") == 9:
                out.append((j, {"diverged": "nan", "diverged_step": 1}))
                continue
            score = (c["outer_lr"] - 0.3) ** 2 + (c["method_options"].get("truncate", 5) - 5) ** 2 + c["seed"]
            out.append((j, {"selected_value": score, "selected_step": 7, "test_accuracy": -score, "f1": 0.5}))
        return out


def _ctx(tmp_path):
    ctx = FakeContext(scale="smoke", seeds=3, out_dir=Path(tmp_path))
    ctx.calls, ctx.last_jobs = [], []
    return ctx


def _base():
    cfg = {"method": "rhg", "method_options": {}, "outer_lr": 0.3, "seed": 0, "init_lr": None}
    return {"A": Job("d", "s", "A", 0, "hyperclean", dict(cfg)),
            "B": Job("d", "s", "B", 0, "hyperclean", dict(cfg, method="trhg", method_options={"truncate": 3}))}


def test_tune_picks_the_smallest_held_out_score_and_runs_the_other_seeds_there(tmp_path):
    ctx = _ctx(tmp_path)
    grids = {"A": Grid("outer_lr", (0.1, 0.3, 1.0)), "B": Grid("truncate", (2, 5, 9))}
    pairs = tune(ctx, "x", _base(), grids, seeds=3)
    assert [(j.method, j.seed) for j, _ in pairs] == [("A", 0), ("A", 1), ("A", 2), ("B", 0), ("B", 1), ("B", 2)]
    assert all(j.config["outer_lr"] == 0.3 for j, _ in pairs if j.method == "A")
    assert all(j.config["method_options"]["truncate"] == 5 for j, _ in pairs if j.method == "B")
    assert [c for c in ctx.calls[0]] == [("A", 0, "outer_lr=0.1"), ("A", 0, "outer_lr=0.3"), ("A", 0, "outer_lr=1.0"),
                                         ("B", 0, "truncate=2"), ("B", 0, "truncate=5"), ("B", 0, "truncate=9")]
    assert ctx.calls[1] == [("A", s, "outer_lr=0.3") for s in range(3)] + [("B", s, "truncate=5") for s in range(3)]
    # seed 0's final job is the chosen grid run (same directory and configuration: run_grid reads it back)
    grid_a = [j for j, _ in ctx.last_jobs[0] if j.variant == "outer_lr=0.3"][0]
    assert pairs[0][0].name == grid_a.name and pairs[0][0].config == grid_a.config
    rec = ctx.meta["tuning"]
    assert rec["A"]["chosen"] == 0.3 and rec["A"]["grid"] == [0.1, 0.3, 1.0]
    assert rec["A"]["scores"] == pytest.approx([0.04, 0.0, 0.49])
    assert rec["B"]["scores"][2] is None  # diverged: never chosen, recorded as such
    assert pairs[1][1]["selected_value"] == 1.0  # seed 1's own run
    # expand: the chosen value applied to other settings
    ctx = _ctx(tmp_path)
    pairs = tune(ctx, "x", _base(), grids, seeds=1,
                 expand=lambda label, job: [common.replace(job, setting=f"K={k}") for k in (1, 2)])
    assert [(j.method, j.setting, j.variant) for j, _ in pairs] == [
        ("A", "K=1", "outer_lr=0.3"), ("A", "K=2", "outer_lr=0.3"), ("B", "K=1", "truncate=5"), ("B", "K=2", "truncate=5")]


def test_tune_maximize_picks_the_largest_score_and_never_a_diverged_run(tmp_path):
    ctx = _ctx(tmp_path)
    grids = {"A": Grid("outer_lr", (0.1, 0.3, 1.0)), "B": Grid("truncate", (2, 5, 9))}
    pairs = tune(ctx, "x", _base(), grids, seeds=1, score="test_accuracy", maximize=True)
    # test_accuracy = -score here: the largest is the smallest score (0.3 and 5); truncate = 9 diverged
    assert [j.variant for j, _ in pairs] == ["outer_lr=0.3", "truncate=5"]
    rec = ctx.meta["tuning"]
    assert rec["A"]["mode"] == "max" and rec["B"]["scores"][2] is None
    assert rec["A"]["scores"] == pytest.approx([-0.04, 0.0, -0.49])


def test_tune_refuses_unequal_budgets_and_missing_grids(tmp_path):
    with pytest.raises(ValueError, match="same tuning budget"):
        tune(_ctx(tmp_path), "x", _base(), {"A": Grid("outer_lr", (0.1, 0.3)), "B": Grid("truncate", (2, 5, 9))}, 3)
    with pytest.raises(ValueError, match="no tuning grid for B"):
        tune(_ctx(tmp_path), "x", _base(), {"A": Grid("outer_lr", (0.1, 0.3))}, 3)


def test_grid_apply_sets_runner_keys_method_options_and_nested_schedules():
    cfg = {"outer_lr": 0.3, "init_lr": None, "method_options": {"alpha": {"schedule": "geometric", "c": 0.5}}}
    assert Grid("init_lr", (1,)).apply(cfg, 0.01)["init_lr"] == 0.01
    out = Grid("alpha_c", (1,), path=("alpha", "c")).apply(cfg, 0.8)
    assert out["method_options"]["alpha"] == {"schedule": "geometric", "c": 0.8}
    assert cfg["method_options"]["alpha"]["c"] == 0.5  # the base configuration is not touched
    assert Grid("cg_steps", (1,)).apply(cfg, 40)["method_options"]["cg_steps"] == 40
    tied = Grid("mu1", (1,), also=("theta", "tau")).apply(cfg, 2e-4)["method_options"]
    assert (tied["mu1"], tied["theta"], tied["tau"]) == (2e-4, 2e-4, 2e-4)


@pytest.mark.parametrize("module", [iaptt_table3, bda_table2, improved_table1, bvfim_fig2, fewshot])
def test_every_method_gets_the_same_grid_size(module):
    for scale in common.SCALES:
        g = module.grids(scale)
        assert set(g) == set(module.METHODS)
        assert common.check_grids(g) == 3
        assert all(len(set(grid.values)) == 3 for grid in g.values())


def test_bda_table2_tunes_at_one_k_and_applies_the_choice_at_every_k(tmp_path):
    ctx = _ctx(tmp_path)
    seen = []

    def grid(experiment, jobs):
        seen.append(jobs)
        return [(j, {"selected_value": float(j.config["outer_lr"] != 0.9) if j.method != "BDA"
                     else abs(j.config["method_options"]["alpha"]["c"] - 0.5), "test_accuracy": 0.5, "f1": 0.5})
                for j in jobs]

    ctx.grid = grid
    ctx.seeds = 2
    rows = bda_table2.run(ctx)
    rec = ctx.meta["tuning"]["digits"]
    assert rec["RHG"]["chosen"] == 0.9 and rec["T-RHG"]["chosen"] == 0.9 and rec["BDA"]["chosen"] == 0.5
    settings = {(r["method"], r["setting"], r["seed"]) for r in rows}
    assert settings == {(m, f"K={k}", s) for m in bda_table2.METHODS for k in (2, 4) for s in (0, 1)}
    assert {j.config["inner_steps"] for j in seen[0]} == {2}  # the grid runs at tune_K only
    finals = seen[1]
    assert all(j.config["outer_lr"] == 0.9 for j in finals if j.method != "BDA")
    assert all(j.config["method_options"]["alpha"]["c"] == 0.5 for j in finals if j.method == "BDA")
    assert {j.config["inner_steps"] for j in finals} == {2, 4}


def test_warm_reference_is_one_long_inner_loop(tmp_path):
    # blocks of K steps, each from the end of the previous one, at a fixed x: after t blocks the summary's
    # follower is (t + 1) K plain gradient steps from y0 -- no selection, so the last block is kept
    cfg = hc.config(method="rhg", method_options={}, seed=0, dataset="digits", model="mlp", sizes=(60, 60, 100),
                    noise=0.5, inner_steps=3, inner_lr=0.3, outer_steps=4, outer_lr=0.3, hidden=5, log_every=2,
                    warm_start=True)
    cfg["dtype"] = "float64"
    refs = hc.reference_summaries(cfg)
    assert set(refs) == set(hc.WARM_REFERENCES)
    from bilevel.app.tasks import hyperclean as H

    full = H.config_with_defaults(**{k: v for k, v in cfg.items() if k not in ("method_options", "warm_start")})
    run = H.build(full)
    long = OuterLoop(torch.zeros_like(run.x0), run.y0, method="rhg", outer_lr=1.0, inner_steps=3 * 5, inner_lr=0.3)
    assert refs["no-cleaning"]["test_accuracy"] == run.summarize(long)["test_accuracy"]
    assert refs["no-cleaning"]["upper"] == pytest.approx(run.summarize(long)["upper"], rel=1e-10)
    # with selection on the held-out loss: the kept block is the best evaluated one, and the run stops
    sel = dict(cfg, holdout_size=100, select_metric="holdout_loss", patience=1, outer_steps=40)
    refs = hc.reference_summaries(sel)
    for label in hc.WARM_REFERENCES:
        r = refs[label]
        assert r["selected_step"] % 2 == 0 and math.isclose(r["holdout_loss"], r["selected_value"], rel_tol=1e-12)
        assert r["stopped_early"] == (r["steps_run"] < 40)


def test_context_counts_a_run_read_back_twice_once(tmp_path):
    ctx = Context(scale="smoke", seeds=1, out_dir=Path(tmp_path), progress=False)
    job = Job("d", "s", "RHG", 0, "hyperclean", hc.config(
        method="rhg", method_options={}, seed=0, dataset="digits", model="linear", sizes=(30, 30, 30), noise=0.5,
        inner_steps=2, inner_lr=0.3, outer_steps=2, outer_lr=0.3))
    (_, first), = ctx.grid("x", [job])
    (_, again), = ctx.grid("x", [job])  # read back, as tune() does with the chosen seed-0 run
    assert again == first and ctx.run_seconds == pytest.approx(first["wall_seconds"])
