"""`bilevel reproduce`: every experiment at --scale smoke writes the documented CSV, resumes, and reports."""
from __future__ import annotations

import csv
import json
import math

import pytest

from bilevel.app import reproduce
from bilevel.app.cli import main
from bilevel.app.reproduce import _hyperclean, common

pytestmark = pytest.mark.slow

EXPECTED_METHODS = {
    "iaptt-table3": {"LS", "NS", "RHG", "T-RHG", "BDA", "IAPTT-GM", "oracle", "no-cleaning"},
    "improved-table1": {"basic", "improved", "improved-2"},
    "bda-table2": {"RHG", "T-RHG", "BDA"},
    "bvfim-fig2": {"RHG", "T-RHG", "BDA", "CG", "Neumann", "BVFIM"},
    "fewshot": {"RHG", "T-RHG", "BDA", "BVFIM", "IAPTT-GM"},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    report = reproduce.reproduce((), scale="smoke", seeds=1, out_dir=out, report=out / "REPRODUCTION.md",
                                 jobs=1, progress=False)
    return out, report


@pytest.mark.parametrize("name", list(reproduce.EXPERIMENTS))
def test_csv_columns_and_rows(smoke, name):
    out, _ = smoke
    with open(out / f"{name}.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == common.COLUMNS
        rows = list(reader)
    assert rows and all(r["experiment"] == name for r in rows)
    if name in EXPECTED_METHODS:
        assert {r["method"] for r in rows} == EXPECTED_METHODS[name]
        # one row per method x setting x seed x metric
        keys = [(r["dataset"], r["setting"], r["method"], r["seed"], r["metric"]) for r in rows]
        assert len(keys) == len(set(keys))
        module = reproduce.EXPERIMENTS[name]
        jobs = module.jobs("smoke", 1)
        if name in ("iaptt-table3", "bvfim-fig2", "fewshot"):  # tuned: one run per method (of its grid's 3)
            jobs = [j for j in jobs if j.variant.endswith(f"={meta_tuning(out, name)[j.method]['chosen']}")]
            assert len(jobs) == len(module.METHODS)
        if name == "bda-table2":  # tuned at one K, then every K at the chosen value
            chosen = meta_tuning(out, name)["digits"]
            jobs = [j for j in jobs if j.variant.endswith(f"={chosen[j.method]['chosen']}")]
            jobs = [common.replace(j, setting=f"K={K}") for j in jobs for K in module.SETTINGS["smoke"]["Ks"]]
        if name == "improved-table1":  # tuned at one rho, then every rho (and the ablation) at the chosen step
            settings = module.SETTINGS["smoke"]
            jobs = [common.replace(j, setting=f"rho={rho}") for j in jobs for rho in module.RHOS]
            jobs += [common.replace(j, method=f"improved-{k}") for j in module.jobs("smoke", 1)
                     if j.method == "improved" for k in settings["ablation_k"]]
            chosen = meta_tuning(out, name)
            jobs = [j for j in jobs if j.variant.endswith(f"={chosen[j.method.split('-')[0]]['chosen']}")]
        extra = {"iaptt-table3": len(_hyperclean.WARM_REFERENCES) * 3,  # reference points x metrics, per seed
                 "bvfim-fig2": 2 * len(jobs)}.get(name, 0)  # opt_seconds and per step, per run
        assert len(rows) == sum(len(j.metrics) for j in jobs) + extra
    for r in rows:
        v = float(r["value"])
        assert math.isfinite(v) or "diverged" in json.dumps(r), r
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["scale"] == "smoke" and meta["seeds"] == 1 and meta["seconds"] > 0


def meta_tuning(out, name):
    return json.loads((out / f"{name}.json").read_text())["tuning"]


def test_metric_values_are_the_runs_summaries(smoke):
    out, _ = smoke
    rows = common.read_rows(out / "iaptt-table3.csv")
    chosen = meta_tuning(out, "iaptt-table3")["RHG"]["chosen"]
    (job,) = [j for j in reproduce.iaptt_table3.jobs("smoke", 1)
              if j.method == "RHG" and j.variant == f"outer_lr={chosen}"]
    summary = json.loads((out / "runs" / "iaptt-table3" / job.name / "summary.json").read_text())
    assert summary["select_metric"] == "holdout_loss"
    for metric in ("test_accuracy", "f1", "f1_clean"):
        (value,) = common.select(rows, method="RHG", seed=0, metric=metric)
        assert value == pytest.approx(summary[metric], abs=0, rel=1e-15)


def test_report_has_paper_numbers_and_claims(smoke):
    _, report = smoke
    text = report.read_text()
    for name, module in reproduce.EXPERIMENTS.items():
        assert module.TITLE in text
    assert "83.67" in text  # IAPTT-GM Table 3, FashionMNIST test accuracy of IAPTT-GM
    assert "0.851" in text  # Improved Table 1, Fashion-MNIST rho = 0.6, improved
    assert "**holds**" in text or "**does not hold**" in text


def test_rerun_reads_finished_runs_back(smoke):
    out, _ = smoke
    job = reproduce.iaptt_table3.jobs("smoke", 1)[0]
    summary_path = out / "runs" / "iaptt-table3" / job.name / "summary.json"
    before = summary_path.stat().st_mtime_ns
    rows = reproduce.run_experiment("iaptt-table3", scale="smoke", seeds=1, out_dir=out, progress=False)
    assert summary_path.stat().st_mtime_ns == before
    assert rows == common.read_rows(out / "iaptt-table3.csv")


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    job = reproduce.iaptt_table3.jobs("smoke", 1)[6]  # RHG
    cfg = dict(job.config, outer_steps=30, patience=None)  # selection on, no early stop: runs to step 30
    full = common.run_one("hyperclean", cfg, str(tmp_path / "full"))
    # a run killed after its step-25 checkpoint: keep the checkpoint, drop the summary
    part = tmp_path / "part"
    common.run_one("hyperclean", cfg, str(part))
    (part / "summary.json").unlink()
    ckpts = sorted((part / "checkpoints").glob("*.pt"))
    assert ckpts, "the run should have written checkpoints"
    ckpts[-1].unlink()  # the final one: the newest left is step 25
    resumed = common.run_one("hyperclean", cfg, str(part))
    assert resumed["f1"] == full["f1"] and resumed["test_accuracy"] == full["test_accuracy"]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown experiment"):
        reproduce.check_names(["table9"])
    with pytest.raises(ValueError, match="unknown scale"):
        reproduce.run_experiment("synthetic", scale="huge")
    with pytest.raises(ValueError, match="seeds"):
        reproduce.run_experiment("synthetic", scale="smoke", seeds=0)
    with pytest.raises(ValueError, match="jobs"):
        common.run_grid([], common.Path("."), workers=0)


def test_paper_numbers_are_found():
    refs = common.paper_rows()
    assert common.paper_value(refs, paper=reproduce.iaptt_table3.PAPER, table_or_figure="Table 3",
                              dataset="FashionMNIST", method="RHG", metric="test accuracy (%)") == 81.91
    assert common.paper_value(refs, paper=reproduce.bda_table2.PAPER, table_or_figure="Table 2", setting="K=800",
                              method="BDA") == 90.86


def test_cli_list_and_report_only(smoke, capsys, tmp_path):
    out, _ = smoke
    assert main(["reproduce", "--list"]) == 0
    assert "bda-table2" in capsys.readouterr().out
    report = tmp_path / "R.md"
    assert main(["reproduce", "--report-only", "--out", str(out), "--report", str(report)]) == 0
    assert "BDA Table 2" in report.read_text()
    with pytest.raises(SystemExit):
        main(["reproduce", "nope", "--out", str(tmp_path)])
