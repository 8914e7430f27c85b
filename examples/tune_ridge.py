"""Tune one ridge penalty per feature by hypergradient descent (diabetes data, scikit-learn).

Lower level: the ridge fit on the training split, solved exactly by a linear solve. `custom_root` makes that
solver differentiable through its optimality condition (implicit function theorem), so the validation loss can be
minimized over the 10 log-penalties by gradient descent. The single penalty chosen by a grid search on the same
validation split is the baseline; the test split is only reported.

    python examples/tune_ridge.py [--steps 200]
"""
import argparse

import numpy as np
import torch
from sklearn.datasets import load_diabetes

import bilevel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="outer gradient steps")
    args = p.parse_args(argv)

    X, t = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    t = (t - t.mean()) / t.std()
    idx = np.random.default_rng(0).permutation(len(t))
    tr, va, te = idx[:150], idx[150:300], idx[300:]
    X, t = torch.tensor(X), torch.tensor(t)
    d = X.shape[1]
    A, b = X[tr].T @ X[tr] / len(tr), X[tr].T @ t[tr] / len(tr)

    def optimality(log_lam, w):            # grad_w of 1/2 mean (Xw - t)^2 + 1/2 sum(lam_j w_j^2)
        return A @ w - b + log_lam.exp() * w

    @bilevel.implicit_diff.custom_root(optimality)
    def ridge(log_lam):
        return torch.linalg.solve(A + torch.diag(log_lam.exp()), b)

    def mse(w, rows):
        return ((X[rows] @ w - t[rows]) ** 2).mean()

    # baseline: one penalty for all features, the best of a grid on validation
    grid = np.linspace(-6, 4, 41)
    val = [float(mse(ridge(torch.full((d,), g, dtype=torch.float64)), va)) for g in grid]
    g_best = grid[int(np.argmin(val))]
    w_grid = ridge(torch.full((d,), g_best, dtype=torch.float64))

    # hypergradient descent on one log-penalty per feature, from the grid's choice
    log_lam = torch.full((d,), g_best, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_lam], lr=0.05)
    for _ in range(args.steps):
        opt.zero_grad()
        mse(ridge(log_lam), va).backward()
        opt.step()
    w = ridge(log_lam.detach())

    print(f"grid, one penalty   log lam = {g_best:+.2f}   val MSE {float(mse(w_grid, va)):.4f}   "
          f"test MSE {float(mse(w_grid, te)):.4f}")
    print(f"hypergradient, {d} penalties                 val MSE {float(mse(w, va)):.4f}   test MSE {float(mse(w, te)):.4f}")
    # started from the grid's optimum, descent can only lower the validation loss it minimizes
    assert float(mse(w, va)) < float(mse(w_grid, va))


if __name__ == "__main__":
    main()
