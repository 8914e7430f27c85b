"""``synthetic``: the synthetic experiments with known solutions -- BDA Figs. 1-3 (counter-example Eq. 5,
x* = 1), IAPTT-GM Figs. 1-3 (toy Eq. 10, x* = 11 pi / 4; LLC problem Eq. 13, x* = e) and IAPTT-GM Table 1 as
time / memory ratios to RHG, plus BVFIM on both problems.

The problems are deterministic, so the trajectories do not depend on the seed; the seeds repeat the Table 1
timing (``time_ratio_to_rhg`` is the one number that varies between repetitions). Figures and the detailed
CSVs go to ``<out>/synthetic/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from bilevel.app.experiments import synthetic_bda, synthetic_bvfim, synthetic_iaptt
from bilevel.app.reproduce.common import Context, fmt_stat, markdown_table, paper_rows, paper_value, row, select, stat
from bilevel.problems import iaptt_toy

NAME = "synthetic"
TITLE = "Synthetic problems with known solutions (BDA Figs. 1-3, IAPTT-GM Figs. 1-3 and Table 1, BVFIM)"
PAPER_IAPTT = "IAPTT-GM (Liu et al., NeurIPS 2021)"
LABELS = {"rhg": "RHG", "cg": "LS", "neumann": "NS", "bda": "BDA", "iaptt": "IAPTT-GM", "iagm": "IA-GM",
          "iagm-a": "IA-GM(A)", "bvfim": "BVFIM"}
INITS = ("(1, 2)", "(5, 1)", "(7, -1)")


def run(ctx: Context) -> List[Dict[str, Any]]:
    quick = ctx.scale == "smoke"
    out = ctx.out_dir / "synthetic"
    rows: List[Dict[str, Any]] = []
    bda = synthetic_bda.run(out / "bda", quick=quick)
    for label, r in bda["runs"].items():
        rows.append(row(NAME, "BDA Eq. 5", label, LABELS[r["method"]], 0, "abs_err_x", r["abs_err"]))
    iaptt = synthetic_iaptt.run(out / "iaptt", quick=quick)
    for method, finals in iaptt["toy_final"].items():
        for init, (x, y) in zip(INITS, finals):
            rows.append(row(NAME, "IAPTT-GM Eq. 10", f"(x0, y0) = {init}", LABELS[method], 0, "x_final", x))
            rows.append(row(NAME, "IAPTT-GM Eq. 10", f"(x0, y0) = {init}", LABELS[method], 0, "abs_err_x",
                            abs(x - iaptt_toy.X_STAR)))
    for method, r in iaptt["llc_final"].items():
        for metric in ("x_err", "y_err", "upper"):
            rows.append(row(NAME, "IAPTT-GM Eq. 13 (LLC)", "n = 10" if quick else "n = 50", LABELS[method], 0,
                            metric, r[metric]))
    for seed in range(ctx.seeds):
        t1 = iaptt["table1"] if seed == 0 else synthetic_iaptt.table1(
            [r["method"] for r in iaptt["table1"]], dim=1000, outer_steps=10 if quick else 100, reps=1 if quick else 3)
        for r in t1:
            for metric in ("time_ratio_to_rhg", "memory_ratio_to_rhg"):
                rows.append(row(NAME, "IAPTT-GM Table 1", "toy x 1000", LABELS[r["method"]], seed, metric, r[metric]))
    bv = synthetic_bvfim.run(out / "bvfim", quick=quick)
    llc = next(k for k in bv if k.startswith("llc"))
    for key, ds in (("bda_counterexample", "BDA Eq. 5"), (llc, "IAPTT-GM Eq. 13 (LLC)")):
        for metric in ("x_err", "y_err"):
            rows.append(row(NAME, ds, "BVFIM run", "BVFIM", 0, metric, bv[key][metric]))
    return rows


def report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    refs = paper_rows()
    parts = []
    bda_rows = sorted({r["setting"] for r in rows if r["dataset"] == "BDA Eq. 5" and r["method"] != "BVFIM"})
    body = [[s, f"{select(rows, dataset='BDA Eq. 5', setting=s, metric='abs_err_x')[0]:.4f}"] for s in bda_rows]
    parts.append("BDA counter-example (x* = 1), |x - x*| after the outer loop:\n\n" + markdown_table(["run", "|x - 1|"], body))
    rhg = [v for s in bda_rows if s.startswith("RHG") for v in select(rows, dataset="BDA Eq. 5", setting=s, metric="abs_err_x")]
    bdas = [v for s in bda_rows if s.startswith("BDA") for v in select(rows, dataset="BDA Eq. 5", setting=s, metric="abs_err_x")]
    if rhg and bdas:
        parts.append(f"BDA's claim (RHG cannot reach x* = 1, BDA can): **{'holds' if min(rhg) > 0.4 and min(bdas) < 0.2 else 'does not hold'}** "
                     f"(RHG |x - 1| >= {min(rhg):.3f}; best BDA {min(bdas):.2e}).")
    methods = [m for m in ("IAPTT-GM", "IA-GM", "RHG", "LS", "NS", "BDA")
               if select(rows, dataset="IAPTT-GM Eq. 10", method=m)]
    body = [[m] + [f"{select(rows, dataset='IAPTT-GM Eq. 10', method=m, setting=f'(x0, y0) = {i}', metric='x_final')[0]:.3f}"
                   for i in INITS] for m in methods]
    parts.append(f"IAPTT-GM toy (x* = 11 pi / 4 = {iaptt_toy.X_STAR:.4f}), final x from three initializations:\n\n"
                 + markdown_table(["method"] + [f"(x0, y0) = {i}" for i in INITS], body))
    ok = all(abs(v - iaptt_toy.X_STAR) < 0.15 for v in select(rows, dataset="IAPTT-GM Eq. 10", method="IAPTT-GM",
                                                                    metric="x_final"))
    parts.append(f"IAPTT-GM's claim (only IAPTT-GM reaches x* from every initialization): IAPTT-GM "
                 f"**{'reaches' if ok else 'does not reach'}** x* within 0.15 from all three.")
    t1 = sorted({r["method"] for r in rows if r["dataset"] == "IAPTT-GM Table 1"})
    body = []
    for m in t1:
        tr = stat(rows, dataset="IAPTT-GM Table 1", method=m, metric="time_ratio_to_rhg")
        mr = stat(rows, dataset="IAPTT-GM Table 1", method=m, metric="memory_ratio_to_rhg")
        pt = paper_value(refs, paper=PAPER_IAPTT, table_or_figure="Table 1", method=m, metric="runtime (s)")
        pm = paper_value(refs, paper=PAPER_IAPTT, table_or_figure="Table 1", method=m, metric="memory (GB)")
        prt = paper_value(refs, paper=PAPER_IAPTT, table_or_figure="Table 1", method="RHG", metric="runtime (s)")
        prm = paper_value(refs, paper=PAPER_IAPTT, table_or_figure="Table 1", method="RHG", metric="memory (GB)")
        body.append([m, fmt_stat(tr), "-" if pt is None else f"{pt / prt:.2f}", fmt_stat(mr, 3),
                     "-" if pm is None else f"{pm / prm:.3f}"])
    parts.append("IAPTT-GM Table 1 as ratios to RHG (ours: a whole solve on 1000 copies of the toy; memory = the "
                 "autograd tape, not the process):\n\n" + markdown_table(
                     ["method", "time / RHG (ours)", "paper", "tape memory / RHG (ours)", "paper (GPU memory)"], body))
    parts.append("The paper's memory column is total GPU memory (about 10 GB for every method, so its ratios are ~1); "
                 "ours isolates what the methods differ in, the saved tape. Figures: `docs/figures/synthetic/` "
                 f"and `{Path(meta.get('out_dir', 'results/reproduce')) / 'synthetic'}/`.")
    bv = {m: select(rows, method="BVFIM", metric=m) for m in ("x_err", "y_err")}
    parts.append(f"BVFIM: |x - x*| = {bv['x_err'][0]:.2e} on the BDA counter-example, RMS error {bv['x_err'][1]:.3f} "
                 "on the LLC problem." if len(bv["x_err"]) == 2 else "")
    return "\n\n".join(p for p in parts if p)
