"""``improved-table1``: Improved Bilevel Model Table 1, Fashion-MNIST row -- F1 of the cleaning of the
improved model (BiG-SAM inner loop, ``bigsam``) against the basic model (plain GD, ``rhg``) at corruption
rates rho = 0.6 / 0.8 / 0.9, plus Fig. 2's "improved-k" ablation (the BiG-SAM step taken only every k inner
steps, ``bigsam_every = k``) at rho = 0.8.

Protocol (settled in ``results/reproduce/improved-table1.notes.md``): the paper's split, 5000 training samples
(a fraction rho of the labels corrupted) / 5000 validation samples, plus a clean held-out split that no objective
sees and that selects the reported state; the follower is re-initialized at every outer step (Alg. 2, line 4), so
K = 100 is its whole budget; the improved model uses t = s and alpha_k = k^-0.25 as the paper states. The paper's
t = s = 0.001 on loss sums diverges for the linear follower (see the notes), so the shared step t is tuned, on the
same three-point grid for both models, at rho = ``tune_rho`` on seed 0 by the held-out loss; the chosen step is
used at every rho and in the ablation. Each run stops when its held-out loss has not improved for ``patience``
evaluations (cap ``outer_steps``) and is reported at its best evaluation.

The paper's follower is "based on ResNet-18" while its Eq. 19 is a linear model; we use the linear
(softmax-regression) follower.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

from bilevel.app.reproduce import _hyperclean as hc
from bilevel.app.reproduce.common import (Context, Grid, Job, around, deviation, fmt_stat, markdown_table, paper_rows,
                                          paper_value, rows_from, stat, tune, tuning_table)

NAME = "improved-table1"
TITLE = "Improved Bilevel Model Table 1: improved (BiG-SAM) vs basic hyper-cleaning F1 (Fashion-MNIST)"
PAPER = "Improved Bilevel Model (Li, Gu, Huang, arXiv 2020)"
RHOS = (0.6, 0.8, 0.9)
#: ``f1``: corrupted samples as positives; ``f1_clean``: clean samples as positives (see :func:`report`)
METRICS = ("f1", "f1_clean", "test_accuracy")
ALPHA = {"schedule": "power", "p": 0.25}
METHODS = ("basic", "improved")

#: per scale; ``inner_lr`` is the centre of the tuning grid of the shared step t (= s for the improved model),
#: ``outer_steps`` the cap of the stopping rule
SETTINGS: Dict[str, Dict[str, Any]] = {
    "smoke": {"dataset": "digits", "sizes": (60, 60, 100), "holdout": 100, "inner_steps": 4, "inner_lr": 0.3,
              "outer_steps": 3, "outer_lr": 0.3, "log_every": 1, "patience": 2, "tune_rho": 0.8,
              "ablation_k": (2,), "ablation_rho": 0.8},
    "cpu": {"dataset": "fashion-mnist", "sizes": (5000, 5000, 10000), "holdout": 5000, "inner_steps": 100,
            "inner_lr": 0.3, "outer_steps": 40, "outer_lr": 0.3, "log_every": 5, "patience": 3, "tune_rho": 0.8,
            "ablation_k": (5, 20), "ablation_rho": 0.8},
    "paper": {"dataset": "fashion-mnist", "sizes": (5000, 5000, 10000), "holdout": 5000, "inner_steps": 100,
              "inner_lr": 0.3, "outer_steps": 1000, "outer_lr": 0.3, "log_every": 10, "patience": 5,
              "tune_rho": 0.8, "ablation_k": (2, 5, 10, 20), "ablation_rho": 0.8},
}


def grids(scale: str) -> Dict[str, Grid]:
    """The same three values of the inner step t for both models (the improved model's s follows t: the
    ``bigsam`` method's ``upper_lr`` defaults to ``inner_lr``)."""
    steps = around(SETTINGS[scale]["inner_lr"])
    return {label: Grid("inner_lr", steps) for label in METHODS}


def _job(s: Mapping[str, Any], rho: float, label: str, seed: int, data_root: Any, k: int = 1) -> Job:
    method, opts = ("rhg", {}) if label == "basic" else ("bigsam", {"alpha": dict(ALPHA)})
    if k > 1:
        opts["bigsam_every"] = k
    cfg = hc.config(method=method, method_options=opts, seed=seed, dataset=s["dataset"], model="linear",
                    sizes=s["sizes"], noise=rho, inner_steps=s["inner_steps"], inner_lr=s["inner_lr"],
                    outer_steps=s["outer_steps"], outer_lr=s["outer_lr"], data_root=data_root,
                    log_every=s["log_every"], holdout_size=s["holdout"], select_metric="holdout_loss",
                    patience=s["patience"])
    return Job(s["dataset"], f"rho={rho}", label if k == 1 else f"improved-{k}", seed, "hyperclean", cfg, METRICS)


def jobs(scale: str, seeds: int, data_root: Any = None) -> List[Job]:
    """The tuning runs (both models x grid value at ``tune_rho``, seed 0): what runs first."""
    s, g = SETTINGS[scale], grids(scale)
    return [j for label in METHODS for j in g[label].variants(_job(s, s["tune_rho"], label, 0, data_root))]


def run(ctx: Context) -> List[Dict[str, Any]]:
    s, grid = SETTINGS[ctx.scale], grids(ctx.scale)
    base = {label: _job(s, s["tune_rho"], label, 0, ctx.data_root) for label in METHODS}

    def expand(label: str, chosen: Job) -> List[Job]:
        g = grid[label]
        value = chosen.extra["tuned"][g.knob]
        out = [g.at(_job(s, rho, label, seed, ctx.data_root), value) for seed in range(ctx.seeds) for rho in RHOS]
        if label == "improved":
            out += [g.at(_job(s, s["ablation_rho"], label, seed, ctx.data_root, k), value)
                    for seed in range(ctx.seeds) for k in s["ablation_k"]]
        return out

    return rows_from(NAME, tune(ctx, NAME, base, grid, ctx.seeds, expand=expand))


def report(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    refs = paper_rows()
    s = SETTINGS[meta["scale"]]
    body, gaps = [], {"f1": [], "f1_clean": []}
    for rho in RHOS:
        setting = f"rho={rho}"
        p_imp = paper_value(refs, paper=PAPER, dataset="Fashion-MNIST", setting=f"rho={rho}; K=100",
                            method="Improved (BiG-SAM inner loop)", metric="F1 score")
        p_bas = paper_value(refs, paper=PAPER, dataset="Fashion-MNIST", setting=f"rho={rho}; K=100",
                            method="Basic (GD inner loop, reverse-mode)", metric="F1 score")
        cells = [rho]
        for metric in ("f1", "f1_clean"):
            imp = stat(rows, method="improved", setting=setting, metric=metric)
            bas = stat(rows, method="basic", setting=setting, metric=metric)
            gap = None if imp is None or bas is None else (imp[0] - bas[0], max(imp[1], bas[1]))
            gaps[metric].append(gap)
            cells += [fmt_stat(imp, 3), deviation(imp, p_imp, 3), fmt_stat(bas, 3), deviation(bas, p_bas, 3),
                      "-" if gap is None else f"{gap[0]:+.3f}"]
        cells += [_num(p_imp), _num(p_bas), "-" if p_imp is None or p_bas is None else f"{p_imp - p_bas:+.3f}"]
        body.append(cells)
    table = markdown_table(["rho", "improved F1", "dev.", "basic F1", "dev.", "gap",
                            "improved F1 (clean +)", "dev.", "basic F1 (clean +)", "dev.", "gap (clean +)",
                            "paper improved", "paper basic", "paper gap"], body)
    claims = []
    for metric, what in (("f1", "F1 with the corrupted samples as positives"),
                         ("f1_clean", "F1 with the clean samples as positives")):
        known = [g for g in gaps[metric] if g is not None]
        better = bool(known) and all(g[0] > 0 for g in known)
        growing = len(known) == len(RHOS) and all(a[0] < b[0] for a, b in zip(known, known[1:]))
        sizes = ", ".join(f"rho = {rho}: {g[0]:+.3f} ({'more' if abs(g[0]) > g[1] else 'less'} than one std, "
                          f"{g[1]:.3f})" for rho, g in zip(RHOS, gaps[metric]) if g is not None)
        claims.append(f"{what}: improved > basic at every rho: **{'holds' if better else 'does not hold'}**; the "
                      f"gap grows with rho: **{'holds' if growing else 'does not hold'}** (gaps {sizes}).")
    claim = "\n\n".join(claims)
    abl_rho = f"rho={s['ablation_rho']}"
    labels = [("improved (k = 1)", "improved")] + [(f"improved-{k}", f"improved-{k}") for k in s["ablation_k"]]
    abl = [[shown] + [fmt_stat(stat(rows, method=m, setting=abl_rho, metric=metric), 3)
                      for metric in ("f1", "f1_clean")] for shown, m in labels + [("basic", "basic")]]
    ablation = (f"Fig. 2 ablation at {abl_rho} (BiG-SAM step every k inner steps, plain GD steps otherwise; the "
                "improved model's tuned step):\n\n" + markdown_table(["model", "F1", "F1 (clean +)"], abl))
    trivial = ", ".join(f"{2 * r / (1 + r):.3f}" for r in RHOS)
    definition = ("Which F1? The paper says only \"F1 score\". Its numbers fall with rho (" + ", ".join(
        _num(paper_value(refs, paper=PAPER, dataset="Fashion-MNIST", setting=f"rho={r}; K=100",
                         method="Improved (BiG-SAM inner loop)", metric="F1 score")) for r in RHOS)
                  + f" for the improved model) and at rho = 0.8 and 0.9 lie below the F1 of flagging every sample "
                  f"as corrupted ({trivial} at rho = " + ", ".join(str(r) for r in RHOS) + "), so they cannot be "
                  "the corrupted-positive F1 of a useful cleaner; they fit the clean-positive F1, which falls as "
                  "the clean samples get rarer. Both are reported and both are judged.")
    tuning = tuning_table(meta.get("tuning") or {}, METHODS,
                          f"Tuning (seed 0, rho = {s['tune_rho']}, the same three values of the shared inner step t "
                          "for both models, s = t for the improved one; score = best held-out loss of the run, "
                          "lower is better; the chosen step is used at every rho):")
    protocol = (f"Protocol at this scale: {s['dataset']}, {s['sizes'][0]} train (a fraction rho of the labels "
                f"corrupted) / {s['sizes'][1]} val, plus {s['holdout']} clean held-out samples for selection only; "
                f"linear follower re-initialized at every outer step (the paper's Alg. 2), K = {s['inner_steps']} "
                "inner steps on *mean* losses (improved: t = s, alpha_k = k^-0.25); Adam outer steps of size "
                f"{s['outer_lr']}, evaluated every {s['log_every']}, stopped after {s['patience']} evaluations "
                f"without a lower held-out loss (cap {s['outer_steps']}) and reported at the best one; a sample is "
                "flagged corrupted iff x_i <= 0. Paper: t = s = 0.001 on *sums* over 5000 samples (= 5 on means), "
                "eta = 1 plain gradient descent, ResNet-18-based model, outer loop run to convergence. The paper's "
                "step, rescaled to mean losses, diverges for the linear follower on [0, 1] pixels (see the note "
                "below), so the step is tuned instead, equally for both models.")
    return "\n\n".join(p for p in [table, definition, claim, ablation, tuning, protocol] if p)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"
