"""`bilevel reproduce` never writes over the committed (--scale cpu) results with results of another scale unless
asked (issue 14): the output directory and the report default per scale, and a run or a report over results of
another scale is refused without --overwrite.

Every test works in a temporary copy of the repository's committed REPRODUCTION.md and results/reproduce/, with
the working directory there, as when the command is run from the repository root.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from bilevel.app import reproduce
from bilevel.app.cli import build_parser, main
from bilevel.app.reproduce import common

REPO = Path(__file__).resolve().parents[3]


def copy_committed(root: Path) -> Path:
    """Copy REPRODUCTION.md and results/reproduce/ (without the git-ignored runs/) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "REPRODUCTION.md", root / "REPRODUCTION.md")
    shutil.copytree(REPO / "results" / "reproduce", root / "results" / "reproduce",
                    ignore=shutil.ignore_patterns("runs"))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of REPRODUCTION.md and of every file under results/reproduce/."""
    files = [root / "REPRODUCTION.md"] + sorted(p for p in (root / "results" / "reproduce").rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    root = copy_committed(tmp_path / "repo")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`bilevel reproduce synthetic --scale smoke` run for real (about 15 s) in a copy of the repository root."""
    root = tmp_path_factory.mktemp("repo")
    copy_committed(root)
    before = snapshot(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        code = main(["reproduce", "synthetic", "--scale", "smoke", "--seeds", "1", "--jobs", "1", "--quiet"])
    return root, before, code


def smoke_rows(smoke_run):
    root, _, _ = smoke_run
    return common.read_rows(root / "results" / "reproduce-smoke" / "synthetic.csv")


def test_committed_results_are_cpu_scale():
    metas = [json.loads(p.read_text()) for p in (REPO / "results" / "reproduce").glob("*.json")]
    assert metas and {m["scale"] for m in metas} == {common.COMMITTED_SCALE} == {"cpu"}
    assert reproduce.report.read_report_scales(REPO / "REPRODUCTION.md") == ["cpu"]


def test_default_directories_depend_on_the_scale(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert reproduce.default_out_dir("cpu") == Path("results/reproduce")
    assert reproduce.default_out_dir("smoke") == Path("results/reproduce-smoke")
    assert reproduce.default_out_dir("paper") == Path("results/reproduce-paper")
    assert reproduce.default_report(Path("results/reproduce")) == Path("REPRODUCTION.md")
    assert reproduce.default_report(tmp_path / "results" / "reproduce") == Path("REPRODUCTION.md")
    assert reproduce.default_report(Path("results/reproduce-smoke")) == Path("results/reproduce-smoke/REPRODUCTION.md")
    with pytest.raises(ValueError, match="unknown scale"):
        reproduce.default_out_dir("huge")
    args = build_parser(["reproduce"]).parse_args(["reproduce", "synthetic"])
    assert (args.out, args.report, args.overwrite) == (None, None, False)


@pytest.mark.slow
def test_smoke_run_from_the_repository_root_leaves_the_committed_results_untouched(smoke_run):
    root, before, code = smoke_run
    assert code == 0
    assert snapshot(root) == before  # REPRODUCTION.md and every file under results/reproduce/, byte for byte
    out = root / "results" / "reproduce-smoke"
    assert json.loads((out / "synthetic.json").read_text())["scale"] == "smoke"
    assert (out / "synthetic.csv").exists() and (out / "synthetic" / "bda" / "summary.csv").exists()
    text = (out / "REPRODUCTION.md").read_text()
    assert "These are `--scale smoke` runs" in text and "`bilevel reproduce --report-only --scale smoke`" in text
    assert "data: `synthetic.csv`" in text  # links relative to the report inside the output directory


def test_writing_smoke_results_over_the_committed_ones_is_refused(repo, capsys):
    before = snapshot(repo)
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "synthetic", "--scale", "smoke", "--seeds", "1", "--jobs", "1", "--quiet",
              "--out", "results/reproduce"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "results/reproduce holds results of another scale than --scale smoke" in err
    assert "synthetic (cpu)" in err and "--overwrite" in err and "results/reproduce-smoke" in err
    with pytest.raises(reproduce.ScaleConflictError):
        reproduce.run_experiment("synthetic", scale="smoke", seeds=1, out_dir="results/reproduce", progress=False)
    with pytest.raises(reproduce.ScaleConflictError):
        reproduce.reproduce(["synthetic"], scale="paper", seeds=1, out_dir="results/reproduce", progress=False)
    assert snapshot(repo) == before
    assert not (repo / "results" / "reproduce" / "runs").exists()  # refused before anything ran


def test_replacing_the_committed_report_by_another_scale_is_refused(repo, smoke_run, capsys):
    shutil.copytree(smoke_run[0] / "results" / "reproduce-smoke", repo / "results" / "reproduce-smoke")
    before = snapshot(repo)
    with pytest.raises(SystemExit):
        main(["reproduce", "--report-only", "--scale", "smoke", "--report", "REPRODUCTION.md"])
    assert "REPRODUCTION.md reports --scale cpu results; refusing to replace it by a report of --scale smoke" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused before running: the report is checked first
        main(["reproduce", "synthetic", "--scale", "smoke", "--seeds", "1", "--quiet", "--report", "REPRODUCTION.md"])
    assert "refusing to replace it" in capsys.readouterr().err
    assert snapshot(repo) == before
    # a file that is no report is not replaced either
    notes = repo / "NOTES.md"
    notes.write_text("mine\n")
    with pytest.raises(SystemExit):
        main(["reproduce", "--report-only", "--scale", "smoke", "--report", "NOTES.md"])
    assert "is not a report of bilevel reproduce" in capsys.readouterr().err
    assert notes.read_text() == "mine\n"
    # the default report of a smoke directory is inside it, and regenerating it is fine
    assert main(["reproduce", "--report-only", "--scale", "smoke"]) == 0
    assert "wrote results/reproduce-smoke/REPRODUCTION.md" in capsys.readouterr().out
    assert snapshot(repo) == before


def test_overwrite_writes_over_results_of_another_scale(repo, smoke_run, monkeypatch, capsys):
    rows = smoke_rows(smoke_run)
    monkeypatch.setattr(reproduce.synthetic, "run", lambda ctx: rows)  # the smoke rows, without the 15 s
    assert main(["reproduce", "synthetic", "--scale", "smoke", "--seeds", "1", "--jobs", "1", "--quiet",
                 "--out", "results/reproduce", "--overwrite"]) == 0
    assert "wrote REPRODUCTION.md (results in results/reproduce/)" in capsys.readouterr().out
    out = repo / "results" / "reproduce"
    assert json.loads((out / "synthetic.json").read_text())["scale"] == "smoke"
    assert common.read_rows(out / "synthetic.csv") == rows
    assert json.loads((out / "fewshot.json").read_text())["scale"] == "cpu"  # the other experiments stay
    assert "These are `--scale cpu, smoke` runs" in (repo / "REPRODUCTION.md").read_text()


def test_same_scale_rerun_and_report_need_no_overwrite(repo, monkeypatch, capsys):
    committed = repo / "results" / "reproduce"
    rows = common.read_rows(committed / "synthetic.csv")
    monkeypatch.setattr(reproduce.synthetic, "run", lambda ctx: rows)
    report_head = (repo / "REPRODUCTION.md").read_text().splitlines()[:20]
    assert main(["reproduce", "--report-only"]) == 0
    assert (repo / "REPRODUCTION.md").read_text().splitlines()[:20] == report_head
    assert main(["reproduce", "synthetic", "--seeds", "3", "--jobs", "1", "--quiet"]) == 0
    assert "wrote REPRODUCTION.md (results in results/reproduce/)" in capsys.readouterr().out
    assert json.loads((committed / "synthetic.json").read_text())["scale"] == "cpu"
    assert common.read_rows(committed / "synthetic.csv") == rows
    assert reproduce.report.read_report_scales(repo / "REPRODUCTION.md") == ["cpu"]


def test_unknown_scale_in_the_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "synthetic.csv").write_text(",".join(common.COLUMNS) + "\n")  # results without their metadata
    with pytest.raises(reproduce.ScaleConflictError, match=r"synthetic \(unknown\)"):
        reproduce.run_experiment("synthetic", scale="smoke", out_dir=out, progress=False)
    assert os.listdir(out) == ["synthetic.csv"]
