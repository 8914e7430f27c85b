"""`bilevel reproduce` experiments of issue 9 (bvfim-fig3, improved-hyperrep, fewshot-baselines) at --scale smoke:
the documented CSV, one row per method x setting x seed x metric, finite values, resumable timing, and a report
that states the papers' claims and numbers."""
from __future__ import annotations

import csv
import json
import math

import pytest

from bilevel.app import reproduce
from bilevel.app.reproduce import bvfim_fig3, common, fewshot_baselines, improved_hyperrep

pytestmark = pytest.mark.slow

NAMES = ("bvfim-fig3", "improved-hyperrep", "fewshot-baselines")
EXPECTED_METHODS = {
    "bvfim-fig3": {"RHG", "CG", "Neumann", "BVFIM"},
    "improved-hyperrep": {"improved", "basic"},
    "fewshot-baselines": {"MAML", "FOMAML", "Reptile", "Meta-SGD"},
}
#: made-up hyper-representation results (the `fewshot` experiment's CSV) that the fewshot-baselines report shows
FAKE_FEWSHOT = {"RHG": 0.4321, "T-RHG": 0.4111, "BDA": 0.4555, "BVFIM": 0.4222, "IAPTT-GM": 0.4444}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce9")
    rows = []
    for method, acc in FAKE_FEWSHOT.items():
        for metric, value in (("meta_test_accuracy", acc), ("meta_test_ci95", 0.05)):
            rows.append(common.row("fewshot", "rotated-fashion-mnist", "5-way 1-shot", method, 0, metric, value))
    common.write_rows(out / "fewshot.csv", rows)
    (out / "fewshot.json").write_text(json.dumps({"experiment": "fewshot", "scale": "smoke", "seeds": 1,
                                                  "settings": reproduce.fewshot.SETTINGS["smoke"]}))
    report = reproduce.reproduce(NAMES, scale="smoke", seeds=1, out_dir=out, report=out / "REPRODUCTION.md",
                                 jobs=1, progress=False)
    return out, report


def _expected_rows(name: str) -> int:
    jobs = reproduce.EXPERIMENTS[name].jobs("smoke", 1)
    n = sum(len(j.metrics) for j in jobs)
    if name == "improved-hyperrep":  # plus the F1 at equal wall time of every hyper-cleaning run
        n += sum(1 for j in jobs if j.extra["part"] == "clean")
    return n


@pytest.mark.parametrize("name", NAMES)
def test_csv_columns_and_rows(smoke, name):
    out, _ = smoke
    assert name in reproduce.EXPERIMENTS
    with open(out / f"{name}.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == common.COLUMNS
        rows = list(reader)
    assert rows and all(r["experiment"] == name for r in rows)
    assert {r["method"] for r in rows} == EXPECTED_METHODS[name]
    keys = [(r["dataset"], r["setting"], r["method"], r["seed"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert len(rows) == _expected_rows(name)
    for r in rows:
        assert math.isfinite(float(r["value"])), r
    meta = json.loads((out / f"{name}.json").read_text())
    assert meta["scale"] == "smoke" and meta["seeds"] == 1 and meta["seconds"] > 0
    assert (out / f"{name}.png").exists() or name == "fewshot-baselines"


def test_bvfim_fig3_params_and_times(smoke):
    out, _ = smoke
    rows = common.read_rows(out / "bvfim-fig3.csv")
    for job in bvfim_fig3.jobs("smoke", 1):
        (params,) = common.select(rows, setting=job.setting, method=job.method, metric="lower_params")
        assert params == bvfim_fig3.lower_params(job.config)
        (sec,) = common.select(rows, setting=job.setting, method=job.method, metric="seconds_per_step")
        assert 0 < sec < 10
    # the paper-scale sizes on Fashion-MNIST: 784 inputs, 10 classes
    assert bvfim_fig3.lower_params({"dataset": "fashion-mnist", "model": "linear", "hidden": 5}) == 7850
    assert bvfim_fig3.lower_params({"dataset": "fashion-mnist", "model": "mlp", "hidden": 100}) == 79510
    steps = list(csv.DictReader(open(out / bvfim_fig3.STEPS_FILE, newline="")))
    reps = bvfim_fig3.SETTINGS["smoke"]["reps"]
    assert len(steps) == reps * len(bvfim_fig3.jobs("smoke", 1))
    assert all(s["solver_iterations"] != "" for s in steps if s["method"] == "CG")


def test_bvfim_fig3_reads_timings_back(smoke):
    out, _ = smoke
    timing = sorted((out / "runs" / "bvfim-fig3").rglob(bvfim_fig3.TIMING_FILE))
    assert len(timing) == len(bvfim_fig3.SETTINGS["smoke"]["followers"])
    before = [p.stat().st_mtime_ns for p in timing]
    rows = reproduce.run_experiment("bvfim-fig3", scale="smoke", seeds=1, out_dir=out, progress=False)
    assert [p.stat().st_mtime_ns for p in timing] == before
    assert rows == common.read_rows(out / "bvfim-fig3.csv")


def test_improved_hyperrep_budgets_are_prefixes(smoke):
    """The few-shot runs with budgets 1 and 2 share their first outer step exactly (deterministic runs)."""
    out, _ = smoke
    rows = common.read_rows(out / "improved-hyperrep.csv")
    settings = {r["setting"] for r in rows}
    assert any(s.startswith("16-way") for s in settings) and any(s.startswith("K=") for s in settings)
    jobs = {(j.setting, j.method): j for j in improved_hyperrep.few_jobs("smoke", 1)}
    for method in improved_hyperrep.MODELS:
        lines = []
        for budget in (1, 2):
            job = jobs[(improved_hyperrep.few_setting(5, 1, budget), method)]
            path = out / "runs" / "improved-hyperrep" / job.name / "metrics.jsonl"
            recs = [json.loads(s) for s in path.read_text().splitlines()]
            lines.append(next(r for r in recs if r["step"] > 0))  # the first line after a step (not step 0)
        assert lines[0]["step"] == lines[1]["step"] == 1
        assert lines[0]["upper"] == lines[1]["upper"]
        assert lines[0]["train_query_accuracy"] == lines[1]["train_query_accuracy"]
    assert (out / improved_hyperrep.CURVES_FILE).exists()


def test_improved_hyperrep_helpers():
    assert improved_hyperrep.parse_few_setting(improved_hyperrep.few_setting(16, 5, 30)) == (16, 5, 30)
    assert improved_hyperrep.parse_few_setting("K=25") is None
    m, h, n = improved_hyperrep.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(improved_hyperrep.mean_ci([5.0])[1])
    curve = [{"time": 1.0, "f1": 0.1}, {"time": 2.0, "f1": 0.2}, {"time": 3.0, "f1": 0.3}]
    assert improved_hyperrep.f1_at_time(curve, 2.5) == 0.2
    # the improved model's upper step puts t on every task's query loss (F is a mean over the meta-batch)
    job = next(j for j in improved_hyperrep.few_jobs("cpu", 1) if j.method == "improved")
    assert job.config["method_options"]["upper_lr"] == job.config["meta_batch"] * job.config["inner_lr"]
    clean = next(j for j in improved_hyperrep.clean_jobs("cpu", 1) if j.method == "improved")
    assert clean.config["method"] == "bigsam" and "upper_lr" not in clean.config["method_options"]


def test_report_has_claims_and_paper_numbers(smoke):
    _, report = smoke
    text = report.read_text()
    sections = {name: text[text.index(reproduce.EXPERIMENTS[name].TITLE):] for name in NAMES}
    for name in NAMES:
        head = sections[name].split("\n## ")[0]
        assert "**holds**" in head or "**does not hold**" in head, name
        assert "Protocol" in head, name
    fig3 = sections["bvfim-fig3"].split("\n## ")[0]
    assert "BVFIM/RHG" in fig3 and "BVFIM/CG" in fig3 and "slopes" in fig3
    hyper = sections["improved-hyperrep"].split("\n## ")[0]
    assert "16-way" in hyper and "equal wall time" in hyper
    base = sections["fewshot-baselines"].split("\n## ")[0]
    assert "98.70" in base  # BDA Table 3, Omniglot 5-way 1-shot, MAML
    assert "48.70 ± 0.75" in base  # IAPTT-GM Table 2, MiniImageNet ConvNet-4 5-way 1-shot, MAML
    assert "43.21" in base and "45.55" in base  # the fewshot experiment's RHG and BDA rows
    assert "Proto Net" in base and "out of scope" in base


def test_fewshot_baselines_without_fewshot_csv(tmp_path, smoke):
    out, _ = smoke
    rows = common.read_rows(out / "fewshot-baselines.csv")
    text = fewshot_baselines.report(rows, {"scale": "smoke", "out_dir_abs": str(tmp_path)})
    assert "cannot be checked" in text and "not run" in text
