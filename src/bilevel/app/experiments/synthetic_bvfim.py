"""BVFIM on the two synthetic problems of the papers, with convergence curves.

* BDA counterexample (BDA, Eq. 5): ``F = 1/2 (x - y2)^2 + 1/2 (y1 - 1)^2``, ``f = 1/2 y1^2 - x y1``,
  x in [-100, 100], y in R^2; the lower level has a line of solutions (y2 free), x* = 1, y* = (1, 1).
* LLC problem (IAPTT-GM, Eq. 13): ``F = ||x - y2||^4 + ||y1 - e||^4``, ``f = 1/2 ||y1||^2 - x'y1``,
  x in [-100, 100]^n, x* = y1* = y2* = e (n = 50; 10 with ``--quick``).

Both are solved by :func:`bilevel.solve` with ``method="bvfim"`` (first order, no Hessian-vector products);
|x - x*| (RMS over coordinates) and ||y - y*|| (RMS) are recorded at every outer step. Writes
``bvfim_synthetic.csv`` and ``bvfim_synthetic.png`` to ``--out``.

Usage: ``python -m bilevel.app.experiments.synthetic_bvfim --out DIR [--quick]``.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import time
from typing import Callable, Dict, List, Tuple

import torch

import bilevel
from bilevel.problems import bda_counterexample as _bda
from bilevel.problems.llc import llc_problem as _llc_problem

__all__ = ["bda_counterexample", "llc_problem", "run", "main"]


def bda_counterexample() -> Tuple[Callable, Callable]:
    """``(F, f)`` of BDA Eq. (5) on ``x`` of shape (1,) and ``y`` of shape (2,)
    (from :mod:`bilevel.problems.bda_counterexample`)."""
    return _bda.upper, _bda.lower


def llc_problem(n: int) -> Tuple[Callable, Callable]:
    """``(F, f)`` of IAPTT-GM Eq. (13) on ``x`` of shape (n,) and ``y = {"y1": (n,), "y2": (n,)}``
    (:func:`bilevel.problems.llc_problem` with ``layout="dict"``)."""
    return _llc_problem(n, "dict")


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t)) / t.numel() ** 0.5


def run(out_dir: pathlib.Path, quick: bool = False) -> Dict[str, object]:
    """Run both problems, write CSV + PNG to ``out_dir`` and return the final errors and timings.

    Parameters
    ----------
    out_dir : pathlib.Path
        Output directory (created if needed).
    quick : bool
        Fewer outer steps and n = 10 for the LLC problem (under 20 s).

    Returns
    -------
    dict
        Per problem: ``x_err`` (final RMS |x - x*|), ``y_err`` (final RMS ||y - y*||), ``seconds``,
        ``outer_steps``; plus ``csv`` and ``png`` paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = torch.float64
    n = 10 if quick else 50
    problems = {
        "bda_counterexample": dict(
            fns=bda_counterexample(), x0=torch.tensor([5.0], dtype=d), y0=torch.zeros(2, dtype=d),
            y_cat=lambda y: y,
            kw=dict(outer_steps=300 if quick else 500, outer_lr=0.1, inner_steps=40, inner_lr=0.5, z_steps=10,
                    y_steps=10, y_lr=0.2, decay=1.03, warm_start=True)),
        f"llc_n{n}": dict(
            fns=llc_problem(n), x0=torch.zeros(n, dtype=d),
            y0={"y1": torch.zeros(n, dtype=d), "y2": torch.zeros(n, dtype=d)},
            y_cat=lambda y: torch.cat([y["y1"], y["y2"]]),
            kw=dict(outer_steps=150 if quick else 400, outer_lr=0.05, inner_steps=40, inner_lr=0.5, z_steps=10,
                    y_steps=10, y_lr=0.5 / n, decay=1.05, warm_start=True)),
    }
    summary: Dict[str, object] = {}
    all_rows: List[Dict[str, object]] = []
    from bilevel.app.run.plots import figure_legend, line_style

    TITLES = {"bda_counterexample": "BDA counter-example (Eq. 5)", f"llc_n{n}": f"LLC problem (n = {n})"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    for ax, (name, spec) in zip(axes, problems.items()):
        upper, lower = spec["fns"]
        rows, seconds = _solve_tracked(upper, lower, spec["x0"], spec["y0"], spec["y_cat"], spec["kw"])
        for row in rows:
            row["problem"] = name
        all_rows.extend(rows)
        steps = [r["step"] for r in rows]
        xe, ye = [max(r["x_err"], 1e-16) for r in rows], [max(r["y_err"], 1e-16) for r in rows]
        ax.plot(steps, xe, label="|x - x*| (RMS)", **line_style(0, len(rows), 2))
        ax.plot(steps, ye, label="||y - y*|| (RMS)", **line_style(1, len(rows), 2))
        if max(xe + ye) > 20 * min(xe + ye):  # log scale only over a wide range
            ax.set_yscale("log")
        ax.set_title(TITLES.get(name, name))
        ax.set_xlabel("outer iteration")
        ax.grid(True, alpha=0.3)
        summary[name] = {"x_err": rows[-1]["x_err"], "y_err": rows[-1]["y_err"], "seconds": seconds,
                         "outer_steps": len(rows) - 1, "backtracks": sum(int(r["backtracks"]) for r in rows)}
    figure_legend(fig, axes)
    fig.suptitle("BVFIM (no Hessian-vector products): distance to the known solution", fontsize=12)
    png = out_dir / "bvfim_synthetic.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    csv_path = out_dir / "bvfim_synthetic.csv"
    keys = ["problem", "step", "x_err", "y_err", "upper", "gap", "tau", "backtracks"]
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in all_rows:
            w.writerow({k: r[k] for k in keys})
    summary["csv"] = str(csv_path)
    summary["png"] = str(png)
    return summary


def _solve_tracked(upper, lower, x0, y0, y_cat, kw) -> Tuple[List[Dict[str, float]], float]:
    """``bilevel.solve`` recording, at every outer step t, the errors of x_t and of the y-loop iterate y_t
    (the pair at which step t's hypergradient is taken).

    y_t is caught where BVFIM's formula evaluates F(x_t, y_t) with x on the tape (the y-loop differentiates
    only in y, and the final value is taken without a tape); x_t is caught by the x-box projection.
    """
    rows: List[Dict[str, float]] = []
    ys: List[torch.Tensor] = []
    xs: List[torch.Tensor] = []

    def upper_spy(x, y):
        if torch.is_grad_enabled() and x.requires_grad:
            ys.append(y_cat(y).detach().clone())
        return upper(x, y)

    def x_box(x):
        out = torch.clamp(x, -100.0, 100.0)
        xs.append(out.detach().clone())
        return out

    def callback(t: int, rec: Dict[str, object]) -> None:
        rows.append({"step": t, "upper": float(rec["upper"]), "gap": float(rec["gap"]),
                     "backtracks": int(rec["backtracks"]), "tau": float(rec["tau"]),
                     "x_err": _rms(xs[t] - 1.0), "y_err": _rms(ys[-1] - 1.0)})

    t0 = time.perf_counter()
    res = bilevel.solve(upper_spy, lower, x0, y0, method="bvfim", x_bounds=x_box, callback=callback, **kw)
    seconds = time.perf_counter() - t0
    rows.append({"step": len(rows), "upper": float(res.info["upper_final"]), "gap": float("nan"),
                 "backtracks": 0, "tau": float("nan"), "x_err": _rms(res.x - 1.0),
                 "y_err": _rms(y_cat(res.y) - 1.0)})
    return rows, seconds


def main() -> None:
    """Command-line entry: ``python -m bilevel.app.experiments.synthetic_bvfim --out DIR [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output directory for CSV and PNG")
    parser.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    args = parser.parse_args()
    summary = run(args.out, quick=args.quick)
    for name, vals in summary.items():
        print(f"{name}: {vals}")


if __name__ == "__main__":
    main()
