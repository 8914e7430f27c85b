"""Few-shot protocol study (issue 16): the committed ``fewshot`` cpu grid (3 seeds, 1- and 5-shot, five methods)
with the shared inner step halved, 0.5 -> 0.25, to test whether RHG's and BDA's late-diverging inner loops (the
seed spread of the table at step 0.5) come from the step size. Writes the runs next to this script and prints
mean +- std per method and shot, next to the table then committed (results/reproduce/fewshot.csv at step 0.5).

The study settled the cpu scale's inner step at 0.25; its 30 runs were moved to results/reproduce/runs/fewshot/
(the same configurations), where ``bilevel reproduce fewshot`` read them back for the table of commit e3dff3d.
The few-shot protocol has changed since (meta-validation stopping and tuning; ``fewshot.jobs`` now returns the
tuning runs), so this script reproduces the study only when run at that commit
(``git checkout e3dff3d -- src results/reproduce``).

    python results/reproduce/studies/fewshot-inner-step/run.py      # about 8 minutes on 2 cores
"""
from dataclasses import replace
from pathlib import Path

from bilevel.app.reproduce import common, fewshot

HERE = Path(__file__).resolve().parent


def main() -> None:
    jobs = [replace(j, config=dict(j.config, inner_lr=0.25)) for j in fewshot.jobs("cpu", 3)]
    pairs = common.run_grid(jobs, HERE / "runs", workers=2, label="fewshot inner_lr 0.25")
    new = common.rows_from("fewshot", pairs)
    old = common.read_rows(HERE.parents[1] / "fewshot.csv")
    print("| method | setting | inner step 0.5 (committed) | inner step 0.25 |")
    print("|---|---|---|---|")
    for label in fewshot.METHODS:
        for setting in ("5-way 1-shot", "5-way 5-shot"):
            cells = [common.fmt_stat(common.stat(rows, 100.0, method=label, setting=setting,
                                                 metric="meta_test_accuracy")) for rows in (old, new)]
            print(f"| {label} | {setting} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
