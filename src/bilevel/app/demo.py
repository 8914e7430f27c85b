"""``make demo``: every hypergradient method on a quadratic bilevel problem with a known solution, then a
short data hyper-cleaning comparison on the embedded digits data.

    lower  f(x, y) = 1/2 y'Hy - y'Bx        y*(x) = H^{-1} B x
    upper  F(x, y) = 1/2 ||y - a||^2 + lam/2 ||x||^2

The exact hypergradient is grad phi(x) = lam x + B'H^{-1}(y*(x) - a). The demo prints each method's
estimate, its error against the closed form and its wall time, then solves the outer problem with CG and
compares the result with the closed-form minimizer of phi (the problem:
:func:`bilevel.problems.make_simple_quadratic`). Last, RHG, BDA and IAPTT-GM clean the labels of
scikit-learn's digits (50% corrupted) through ``bilevel.app.run.runner`` and a Markdown table compares them.
"""
from __future__ import annotations

import argparse
import time

import torch

from bilevel import METHODS, hypergrad, solve
from bilevel.problems import make_simple_quadratic


def make_problem(n_x: int = 5, n_y: int = 20, seed: int = 0):
    """The demo's quadratic: :func:`bilevel.problems.make_simple_quadratic`, ``(upper, lower, exact_grad, x_star,
    lr)``."""
    return make_simple_quadratic(n_x, n_y, seed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bilevel.app.demo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--inner-steps", type=int, default=300, help="K inner steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hyperclean", action="store_true", help="skip the hyper-cleaning comparison")
    parser.add_argument("--out", default="results/demo", help="directory of the hyper-cleaning runs")
    args = parser.parse_args(argv)
    upper, lower, exact_grad, x_star, lr = make_problem(seed=args.seed)
    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    y0 = torch.zeros(20, dtype=torch.float64)
    exact = exact_grad(x)
    K = args.inner_steps
    print(f"Quadratic bilevel problem: dim x = 5, dim y = 20, K = {K} inner steps, inner_lr = 1/L = {lr:.3f}")
    print(f"closed-form hypergradient: {[round(v, 6) for v in exact.tolist()]}\n")
    print("| method | rel. error vs closed form | seconds | notes |")
    print("|---|---|---|---|")
    per_method = {"trhg": {"truncate": K // 10}, "neumann": {"neumann_terms": K}}
    for name in sorted(METHODS):
        meth = METHODS[name]
        opts = per_method.get(name, {})
        t0 = time.perf_counter()
        try:
            res = hypergrad(upper, lower, x, y0, method=name, inner_steps=K, inner_lr=lr, **opts)
        except ValueError as err:  # a method needing options this demo does not set
            print(f"| {name} | - | - | skipped: {err} |")
            continue
        dt = time.perf_counter() - t0
        err = float(torch.linalg.vector_norm(res.grad - exact) / torch.linalg.vector_norm(exact))
        note = ", ".join(f"{k}={v}" for k, v in opts.items())
        if meth.learns_init:
            note = (note + ", " if note else "") + "also learns y0"
        print(f"| {name} | {err:.2e} | {dt:.3f} | {note or meth.summary} |")
    print("\nOuter problem, solved with CG hypergradients and Adam (200 steps):")
    out = solve(upper, lower, torch.zeros(5, dtype=torch.float64), y0, method="cg", outer_steps=200, outer_lr=0.1,
                inner_steps=K, inner_lr=lr)
    print(f"  x found    = {[round(v, 4) for v in out.x.tolist()]}")
    print(f"  x* (exact) = {[round(v, 4) for v in x_star.tolist()]}")
    print(f"  |x - x*|_inf = {float((out.x - x_star).abs().max()):.2e}")
    if not args.no_hyperclean:
        from bilevel.app.run.runner import demo_table

        print("\nData hyper-cleaning on digits (500 train with 50% corrupted labels / 500 val / 797 test, "
              "linear softmax follower):")
        print(demo_table(args.out, seed=args.seed))
        print(f"(runs, metrics and curves in {args.out}/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
