"""BDA's synthetic counter-example (Liu et al., ICML 2020, Sec. 2.2 Eq. 5 and Sec. 5.1, Figs. 1-3).

    min_{x in [-100, 100]}  F(x, y) = 1/2 (x - [y]_2)^2 + 1/2 ([y]_1 - 1)^2
    s.t.  y in argmin_{y in R^2}  f(x, y) = 1/2 [y]_1^2 - x [y]_1

The lower-level solution set {(x, t): t in R} is not a singleton; the optimistic solution is x* = 1,
y* = (1, 1), F* = 0. Plain unrolled gradient descent (RHG) never moves [y]_2, so phi_K(x) = F(x, y_K(x)) has
its minimizer away from 1 (~0.5 from y0 = (0, 0), ~1.5 from y0 = (2, 2)); BDA's aggregated steps
(``"bda"``, alpha_k weighting the upper step) pull [y]_2 towards x and the minimizer towards 1.

Settings of the paper: s_u = 0.7 (``upper_lr``), s_l = 0.2 (``inner_lr``); Fig. 1: K = 16, alpha_k = 0.5/k,
inits (x0, y0) = (0, (0, 0)), (0, (2, 2)), (2, (2, 2)); Fig. 2: K = 8, 16, 64 from (0, (2, 2)); Fig. 3: alpha_k = 0,
0.5 and the adaptive 0.9/k (caption) at K = 16 from (0, (2, 2)). The paper does not state the outer optimizer;
**our choice**: projected SGD on x with step 0.5 (about 1 / the largest curvature of phi_K, ~1.94 for RHG), the
same for every method, 200 outer steps (20 in quick mode).

Because every map here is affine in (x, y), phi_K is a quadratic in x, and its exact minimizer x_K* is computed
from two hypergradients (one Newton step); the summary reports it next to the SGD iterate, so settings whose
phi_K is very flat (alpha = 0.5, the theory schedule at small K) are judged by what they converge to, not by
how far SGD got. Cost: one reverse-mode hypergradient (K aggregated steps) per outer step and run.

Outputs in ``out_dir``: ``fig1_initializations.png``, ``fig2_inner_steps.png``, ``fig3_alpha.png`` (the four
metrics of the paper against outer iterations: |F - F*|, |f - f*(x)|, ||x - x*||^2/||x*||^2,
||y - y*||^2/||y*||^2), ``traces.csv`` (every outer step of every run), ``summary.csv`` and ``summary.json``.

The objectives and the solution come from :mod:`bilevel.problems.bda_counterexample` (re-exported here as
``upper``, ``lower``, ``X_STAR``, ``Y_STAR``, ``X_BOUNDS``).

Run ``python -m bilevel.app.experiments.synthetic_bda --out DIR [--quick]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import bilevel
from bilevel import schedules
from bilevel.problems.bda_counterexample import X_BOUNDS, X_STAR, Y_STAR, lower, upper

DTYPE = torch.float64
S_U, S_L = 0.7, 0.2
OUTER_LR = 0.5
OUTER_STEPS, OUTER_STEPS_QUICK = 200, 20


@dataclass(frozen=True)
class Setting:
    """One run: a method with its options, K and the initialization."""

    method: str
    alpha_label: str
    K: int
    x0: float
    y0: Tuple[float, float]

    @property
    def label(self) -> str:
        name = "RHG" if self.method == "rhg" else f"{self.method.upper()} alpha={self.alpha_label}"
        return f"{name}, K={self.K}, x0={self.x0:g}, y0=({self.y0[0]:g},{self.y0[1]:g})"


def _alphas() -> Dict[str, Any]:
    return {
        "0": 0.0,
        "0.5": 0.5,
        "0.5/k": schedules.inverse(0.5),
        "0.9/k": schedules.inverse(0.9),
        "0.5*0.9^k": schedules.geometric(0.5, 0.9),
        # Prop. 1 with sigma = L_F = 1 (F(x, .) has identity Hessian), gamma = 1, eps = 0.1
        "theory": schedules.bda_theory(1.0, S_U, 1.0, 1.0, 0.1),
    }


def _options(s: Setting) -> Dict[str, Any]:
    if s.method == "rhg":
        return {}
    return {"upper_lr": S_U, "alpha": _alphas()[s.alpha_label]}


def _hypergrad(s: Setting, x: float) -> bilevel.HypergradResult:
    return bilevel.hypergrad(upper, lower, torch.tensor([x], dtype=DTYPE), torch.tensor(s.y0, dtype=DTYPE),
                             method=s.method, inner_steps=s.K, inner_lr=S_L, **_options(s))


def exact_minimizer(s: Setting) -> float:
    """argmin of phi_K over [-100, 100] (phi_K is quadratic in x here: one Newton step from two gradients)."""
    g0 = float(_hypergrad(s, 0.0).grad[0])
    g1 = float(_hypergrad(s, 1.0).grad[0])
    return min(max(-g0 / (g1 - g0), X_BOUNDS[0]), X_BOUNDS[1])


def trace(s: Setting, steps: int) -> List[Dict[str, float]]:
    """Projected SGD on x fed by the method's hypergradient; the four metrics of BDA Figs. 1-3 per outer step."""
    x = s.x0
    rows = []
    y_star = torch.tensor(Y_STAR, dtype=DTYPE)
    for t in range(steps + 1):
        res = _hypergrad(s, x)
        y = res.y
        rows.append({
            "step": t, "x": x,
            "F_gap": abs(res.info["upper"] - 0.0),
            "f_gap": abs(res.info["lower"] + 0.5 * x * x),  # f*(x) = min_y f(x, y) = -x^2 / 2
            "x_err": (x - X_STAR) ** 2 / X_STAR ** 2,
            "y_err": float(((y - y_star) ** 2).sum() / (y_star ** 2).sum()),
        })
        if t < steps:
            x = min(max(x - OUTER_LR * float(res.grad[0]), X_BOUNDS[0]), X_BOUNDS[1])
    return rows


def _figures() -> Dict[str, List[Setting]]:
    a, b, c = (0.0, (0.0, 0.0)), (0.0, (2.0, 2.0)), (2.0, (2.0, 2.0))
    fig1 = [Setting(m, "0.5/k", 16, x0, y0) for x0, y0 in (a, b, c) for m in ("rhg", "bda")]
    fig2 = [Setting(m, "0.5/k", K, 0.0, (2.0, 2.0)) for K in (8, 16, 64) for m in ("rhg", "bda")]
    fig3 = [Setting("bda", al, 16, 0.0, (2.0, 2.0)) for al in ("0", "0.5", "0.9/k", "0.5/k", "0.5*0.9^k", "theory")]
    return {"fig1_initializations": fig1, "fig2_inner_steps": fig2, "fig3_alpha": fig3}


def _plot(path: pathlib.Path, title: str, runs: Sequence[Tuple[Setting, List[Dict[str, float]]]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bilevel.app.run.plots import figure_legend, line_style

    fig = Figure(figsize=(16, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    metrics = [("F_gap", "|F - F*|"), ("f_gap", "|f - f*(x)|"), ("x_err", "||x - x*||^2 / ||x*||^2"),
               ("y_err", "||y - y*||^2 / ||y*||^2")]
    axes = fig.subplots(1, 4)
    for ax, (key, name) in zip(axes, metrics):
        for i, (s, rows) in enumerate(runs):
            vals = [max(r[key], 1e-16) for r in rows]
            style = line_style(i, len(rows), len(runs))
            style["linestyle"] = "--" if s.method == "rhg" else "-"  # RHG dashed, BDA solid; markers per run
            ax.semilogy([r["step"] for r in rows], vals, label=s.label, **style)
        ax.set_title(name)
        ax.set_xlabel("outer (UL) iteration")
        ax.grid(True, alpha=0.3)
    figure_legend(fig, axes, ncol=3)
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=110)


def run(out_dir: pathlib.Path, quick: bool = False) -> Dict[str, Any]:
    """Reproduce BDA Figs. 1-3 on the counter-example; write PNGs and CSVs to ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output folder (created if missing).
    quick : bool
        20 instead of 200 outer steps (the exact minimizers of phi_K are computed in both modes).

    Returns
    -------
    dict
        ``settings`` (the protocol), ``runs`` (per run: ``x_final``, ``abs_err`` = |x_final - 1|, ``x_K_star``,
        ``abs_err_K_star`` = |x_K* - 1|, ``figures``), ``bigsam`` (x_K* of ``"bigsam"`` for bigsam_every = 1,
        2, 4, 8, 16 at K = 16 from both y0), ``files`` and ``seconds``.
    """
    start = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = OUTER_STEPS_QUICK if quick else OUTER_STEPS
    figures = _figures()
    cache: Dict[Setting, List[Dict[str, float]]] = {}
    runs: Dict[str, Dict[str, Any]] = {}
    for fig_name, settings in figures.items():
        for s in settings:
            if s not in cache:
                cache[s] = trace(s, steps)
                x_star_K = exact_minimizer(s)
                runs[s.label] = {"method": s.method, "alpha": s.alpha_label, "K": s.K, "x0": s.x0,
                                 "y0": list(s.y0), "x_final": cache[s][-1]["x"],
                                 "abs_err": abs(cache[s][-1]["x"] - X_STAR), "x_K_star": x_star_K,
                                 "abs_err_K_star": abs(x_star_K - X_STAR), "figures": []}
            runs[s.label]["figures"].append(fig_name)
    files = []
    titles = {"fig1_initializations": "BDA Fig. 1: initializations (K=16, alpha_k=0.5/k)",
              "fig2_inner_steps": "BDA Fig. 2: inner steps K (x0=0, y0=(2,2), alpha_k=0.5/k)",
              "fig3_alpha": "BDA Fig. 3: alpha_k (K=16, x0=0, y0=(2,2))"}
    for fig_name, settings in figures.items():
        path = out_dir / f"{fig_name}.png"
        _plot(path, titles[fig_name], [(s, cache[s]) for s in settings])
        files.append(path.name)
    with open(out_dir / "traces.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "method", "alpha", "K", "x0", "y0_1", "y0_2", "step", "x", "F_gap", "f_gap", "x_err",
                    "y_err"])
        for s, rows in cache.items():
            for r in rows:
                w.writerow([s.label, s.method, s.alpha_label, s.K, s.x0, s.y0[0], s.y0[1], r["step"], repr(r["x"]),
                            repr(r["F_gap"]), repr(r["f_gap"]), repr(r["x_err"]), repr(r["y_err"])])
    bigsam = {}
    for y0 in ((0.0, 0.0), (2.0, 2.0)):
        for m in (1, 2, 4, 8, 16):
            g = [float(bilevel.hypergrad(upper, lower, torch.tensor([v], dtype=DTYPE), torch.tensor(y0, dtype=DTYPE),
                                         method="bigsam", inner_steps=16, inner_lr=S_L, upper_lr=S_U,
                                         bigsam_every=m).grad[0]) for v in (0.0, 1.0)]
            xs = -g[0] / (g[1] - g[0])
            bigsam[f"bigsam_every={m}, y0=({y0[0]:g},{y0[1]:g})"] = {"x_K_star": xs, "abs_err_K_star": abs(xs - 1)}
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "x_final", "abs_err", "x_K_star", "abs_err_K_star"])
        for label, r in runs.items():
            w.writerow([label, repr(r["x_final"]), repr(r["abs_err"]), repr(r["x_K_star"]), repr(r["abs_err_K_star"])])
        for label, r in bigsam.items():
            w.writerow([f"{label}, K=16", "", "", repr(r["x_K_star"]), repr(r["abs_err_K_star"])])
    files += ["traces.csv", "summary.csv", "summary.json"]
    summary = {
        "settings": {"s_u": S_U, "s_l": S_L, "outer_optimizer": "projected SGD (our choice)", "outer_lr": OUTER_LR,
                     "outer_steps": steps, "x_bounds": list(X_BOUNDS), "x_star": X_STAR, "y_star": list(Y_STAR),
                     "quick": quick},
        "runs": runs, "bigsam": bigsam, "files": files,
    }
    summary["seconds"] = time.perf_counter() - start
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``python -m bilevel.app.experiments.synthetic_bda --out DIR [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="20 outer steps instead of 200")
    args = parser.parse_args(argv)
    summary = run(args.out, quick=args.quick)
    width = max(len(k) for k in summary["runs"])
    print(f"{'run':<{width}}  {'x_final':>10}  {'|x-1|':>9}  {'x_K*':>10}  {'|x_K*-1|':>9}")
    for label, r in summary["runs"].items():
        print(f"{label:<{width}}  {r['x_final']:>10.5f}  {r['abs_err']:>9.2e}  {r['x_K_star']:>10.5f}  "
              f"{r['abs_err_K_star']:>9.2e}")
    for label, r in summary["bigsam"].items():
        print(f"{label + ', K=16':<{width}}  {'':>10}  {'':>9}  {r['x_K_star']:>10.5f}  {r['abs_err_K_star']:>9.2e}")
    print(f"wrote {', '.join(summary['files'])} to {args.out} in {summary['seconds']:.1f} s")


if __name__ == "__main__":
    main()
