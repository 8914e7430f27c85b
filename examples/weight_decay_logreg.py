"""Per-feature weight decay of a logistic regression (``nn.Linear``) on scikit-learn's breast_cancer data.

Lower level: the cross-entropy of an ``nn.Linear(30, 2)`` on the training split plus ``sum_j exp(x_j) W_:j^2`` (one
log-decay x_j per input feature). Upper level: the validation cross-entropy. The 30 decays are learned by
hypergradient descent with two methods -- ``rhg`` (reverse mode through K gradient steps) and ``cg`` (implicit
differentiation at the K-th iterate) -- against the best single shared decay of a grid, chosen on the same
validation split. The test split is only reported.

    python examples/weight_decay_logreg.py [--outer-steps 50] [--inner-steps 100]
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer

import bilevel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=50)
    p.add_argument("--inner-steps", type=int, default=100)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    X, t = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    idx = np.random.default_rng(0).permutation(len(t))
    parts = {"train": idx[:40], "val": idx[40:240], "test": idx[240:]}  # a small training split: decay matters
    data = {k: (torch.tensor(X[v]), torch.tensor(t[v])) for k, v in parts.items()}
    net = torch.nn.Linear(X.shape[1], 2).double()
    model = bilevel.models.functional(net)
    y0 = bilevel.models.parameters(net)

    def loss(y, split):
        inputs, labels = data[split]
        return F.cross_entropy(model(y, inputs), labels)

    def lower(x, y):
        return loss(y, "train") + 0.5 * (x.exp() * y["weight"] ** 2).sum()

    def upper(x, y):
        return loss(y, "val")

    def accuracy(y, split):
        inputs, labels = data[split]
        return float((model(y, inputs).argmax(1) == labels).double().mean())

    inner = dict(inner_steps=args.inner_steps, inner_lr=0.3)

    def fit(x):
        return bilevel.hypergrad(upper, lower, x, y0, method="rhg", **inner).y

    rows = []
    grid = np.linspace(-7, 1, 17)  # one shared log-decay
    val = [float(loss(fit(torch.full((X.shape[1],), g, dtype=torch.float64)), "val")) for g in grid]
    g_best = float(grid[int(np.argmin(val))])
    y_grid = fit(torch.full((X.shape[1],), g_best, dtype=torch.float64))
    rows.append((f"grid, one decay (log {g_best:+.1f})", y_grid))
    for method, opts in (("rhg", {}), ("cg", {"cg_steps": 30})):
        x0 = torch.full((X.shape[1],), g_best, dtype=torch.float64)  # from the grid's choice
        out = bilevel.solve(upper, lower, x0, y0, method=method, outer_steps=args.outer_steps, outer_lr=0.1,
                            **inner, **opts)
        rows.append((f"{method}, {X.shape[1]} decays", fit(out.x)))  # the K-step fit at the learned decays

    print(f"{'':32s} {'val loss':>9s} {'val acc':>8s} {'test loss':>10s} {'test acc':>9s}")
    for name, y in rows:
        print(f"{name:32s} {float(loss(y, 'val')):9.4f} {accuracy(y, 'val'):8.3f} {float(loss(y, 'test')):10.4f} "
              f"{accuracy(y, 'test'):9.3f}")
    # started from the grid's optimum, rhg's exact descent on the validation loss of the K-step fit lowers it
    # (cg's implicit hypergradient assumes a converged fit, so it only approximates that descent)
    assert float(loss(rows[1][1], "val")) < float(loss(y_grid, "val"))


if __name__ == "__main__":
    main()
