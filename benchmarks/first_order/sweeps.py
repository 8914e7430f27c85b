"""Accuracy against cost for the first-order family on problems with known solutions.

* **The quadratic** ``bilevel.problems.make_simple_quadratic(3, 5, 0)`` (strongly convex lower level, closed-form
  x*): every method from x0 = 0, y0 = 0 with plain SGD on x, at each setting of the parameter its paper tightens
  to approach the bilevel solution (V-PBGD's gamma, F2SA's multiplier schedule, BOME's step and inner steps,
  MEHA's and BiC-GAFFA's penalty c, BAMM's mu), and the approximations (alternating, DARTS, IGA) at their
  defaults: the relative error ||x - x*|| / ||x*|| along the run, the gradient evaluations per outer step, and the
  measured time per outer step.
* **BDA's counter-example** (Eq. 5: non-singleton follower, x* = 1) from x0 = 0, y0 = (2, 2): |x - 1| after the
  budget, for every method.

    python -m benchmarks.first_order.sweeps [--out benchmarks/results/first_order] [--quick]

Writes ``sweeps.json`` and ``SWEEPS.md``; the docs pages quote their tables.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

import bilevel
from bilevel.problems import bda_counterexample as bda
from bilevel.problems import make_simple_quadratic

#: gradient evaluations per outer step (f and F counted alike; an HVP counts 2), T = inner_steps
COST = {
    "alternating": "T + 1", "darts": "T + 4", "iga": "T + 2", "bome": "T + 3", "vpbgd": "T + 3",
    "f2sa": "3T + 3", "meha": "T + 5", "bamm": "T + 5 (one HVP)", "gaffo": "T + 3",
}

# (method, label, outer_lr, outer steps, inner_steps, options): each method's tightening sequence, in order
SWEEPS = [
    ("vpbgd", "gamma = 1", 0.05 / 2, 1000, 10, {"gamma": 1.0}),
    ("vpbgd", "gamma = 4", 0.05 / 5, 2000, 10, {"gamma": 4.0}),
    ("vpbgd", "gamma = 16", 0.05 / 17, 3000, 10, {"gamma": 16.0}),
    ("f2sa", "lam = 1 fixed", 0.05 / 2, 500, 3, {"lam": 1.0, "lam_power": 0.0}),
    ("f2sa", "lam = 10 fixed", 0.05 / 15, 3000, 3, {"lam": 10.0, "lam_power": 0.0}),
    ("f2sa", "lam_k = (k+1)^(1/3)", 0.05 / 15, 3000, 3, {"lam": 1.0, "lam_power": 1.0 / 3.0}),
    ("bome", "xi = 0.05, T = 1", 0.05, 2000, 1, {"y_lr": 0.05}),
    ("bome", "xi = 0.05, T = 10", 0.05, 2000, 10, {"y_lr": 0.05}),
    ("bome", "xi = 0.02, T = 20", 0.02, 2000, 20, {"y_lr": 0.02}),
    ("bome", "xi = 0.002, T = 30", 0.002, 8000, 30, {"y_lr": 0.002}),
    ("meha", "c = 1", 0.05, 1000, 1, {"c": 1.0, "p": 0.0}),
    ("meha", "c = 10", 0.05, 2000, 1, {"c": 10.0, "p": 0.0}),
    ("meha", "c = 100", 0.3, 3000, 1, {"c": 100.0, "p": 0.0}),
    ("meha", "c_k = (k+1)^0.25", 0.05, 3000, 1, {"c": 1.0, "p": 0.25}),
    ("bamm", "mu = 0.5", 0.02, 1000, 1, {"mu0": 0.5, "p": math.inf}),
    ("bamm", "mu = 0.1", 0.02, 1000, 1, {"mu0": 0.1, "p": math.inf}),
    ("bamm", "mu = 0.02", 0.02, 1000, 1, {"mu0": 0.02, "p": math.inf}),
    ("bamm", "mu_k = 0.9 (k+1)^(-1/10)", 0.02, 3000, 1, {"mu0": 0.9, "p": 10.0}),
    ("gaffo", "c = 1", 0.05, 1000, 1, {"c": 1.0, "p": 0.0}),
    ("gaffo", "c = 10", 0.05, 2000, 1, {"c": 10.0, "p": 0.0}),
    ("gaffo", "c = 100", 0.05, 6000, 1, {"c": 100.0, "p": 0.0}),
    ("alternating", "K = 10", 0.05, 2000, 10, {}),
    ("darts", "K = 10, xi = inner_lr", 0.05, 2000, 10, {}),
    ("iga", "K = 10", 0.05, 2000, 10, {}),
]


def _quadratic(method, outer_lr, steps, inner_steps, options, checkpoints=10):
    upper, lower, _, x_star, lr = make_simple_quadratic(3, 5, 0)
    loop = bilevel.OuterLoop(torch.zeros(3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), method=method,
                             outer_lr=outer_lr, outer_optimizer="sgd", inner_steps=inner_steps, inner_lr=lr, **options)
    trajectory, error = [], float("nan")
    start = time.perf_counter()
    try:
        for t in range(steps):
            loop.step(upper, lower)
            if (t + 1) % max(1, steps // checkpoints) == 0:
                error = float(torch.linalg.vector_norm(loop.x - x_star) / torch.linalg.vector_norm(x_star))
                trajectory.append([t + 1, error])
        status = "ok"
    except bilevel.NonFiniteError as err:
        status, error = f"diverged: {err}", float("inf")
    seconds = time.perf_counter() - start
    return {"error": error, "trajectory": trajectory, "status": status,
            "ms_per_step": 1e3 * seconds / max(1, len(trajectory) and trajectory[-1][0] or steps)}


def _counterexample(method, options, steps=2000):
    """|x - 1| on BDA's Eq. 5 from x0 = 0, y0 = (2, 2) (inner_lr 0.5, 10 inner steps, SGD 0.05 on x)."""
    opts = {k: v for k, v in options.items()}
    loop = bilevel.OuterLoop(torch.tensor([bda.X0], dtype=torch.float64), torch.tensor(bda.Y0, dtype=torch.float64),
                             method=method, outer_lr=0.05, outer_optimizer="sgd", inner_steps=10, inner_lr=0.5, **opts)
    try:
        for _ in range(steps):
            loop.step(bda.upper, bda.lower)
        return abs(float(loop.x[0]) - bda.X_STAR)
    except bilevel.NonFiniteError:
        return float("inf")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/first_order")
    p.add_argument("--quick", action="store_true", help="a tenth of the outer steps (for the tests)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    scale = 0.1 if args.quick else 1.0
    rows = []
    for method, label, olr, steps, inner, opts in SWEEPS:
        r = _quadratic(method, olr, max(10, int(steps * scale)), inner, opts)
        rows.append({"method": method, "setting": label, "outer_lr": olr, "outer_steps": max(10, int(steps * scale)),
                     "inner_steps": inner, "options": {k: (str(v) if isinstance(v, float) and not math.isfinite(v)
                                                           else v) for k, v in opts.items()},
                     "grad_evals_per_step": COST[method], **r})
        print(f"{method:12s} {label:28s} error {r['error']:.4f}  {r['ms_per_step']:.2f} ms/step  {r['status']}",
              flush=True)
    counter = {}
    for method in COST:
        counter[method] = _counterexample(method, {}, steps=max(10, int(2000 * scale)))
        print(f"counter-example {method:12s} |x - 1| = {counter[method]:.4f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": 1,
            "quick": args.quick}
    (out / "sweeps.json").write_text(json.dumps({"meta": meta, "quadratic": rows, "counterexample": counter},
                                                indent=1))
    lines = ["# First-order family: accuracy against cost", "",
             "Generated by `python -m benchmarks.first_order.sweeps`; quadratic `make_simple_quadratic(3, 5, 0)`, "
             "float64, SGD on x from x0 = 0, y0 = 0, inner_lr = 1/L.", "",
             "| method | setting | outer steps | outer_lr | T | grad evals / step | ms / step | relative error of x |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['error']:.4f}" if r["error"] < 1e3 else "diverged"
        lines.append(f"| {r['method']} | {r['setting']} | {r['outer_steps']} | {r['outer_lr']:.4g} | "
                     f"{r['inner_steps']} | {r['grad_evals_per_step']} | {r['ms_per_step']:.2f} | {err} |")
    lines += ["", "BDA's counter-example (Eq. 5; x* = 1), x0 = 0, y0 = (2, 2), inner_lr 0.5, T = 10, SGD 0.05 on x, "
              f"{max(10, int(2000 * scale))} outer steps, default options:", "", "| method | abs(x - 1) |", "|---|---|"]
    lines += [f"| {m} | {v:.4f} |" for m, v in counter.items()]
    (out / "SWEEPS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/sweeps.json and SWEEPS.md")


if __name__ == "__main__":
    main()
