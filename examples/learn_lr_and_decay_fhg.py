"""Learn the inner learning rate and the weight decay of a training run by forward mode (``fhg``).

The model is a softmax regression on scikit-learn's digits, trained by K gradient steps. The two hyperparameters
enter the lower objective: with ``inner_lr = 1``, ``f(x, y) = exp(x_0) * (CE_train(y) + exp(x_1) / 2 ||W||^2)``
makes each inner step ``y <- y - exp(x_0) * grad(CE_train + decay term)``, so ``exp(x_0)`` *is* the learning rate
and ``exp(x_1)`` the decay. The validation loss after K steps is differentiated in forward mode: x has two
entries, so ``fhg`` carries two tangents and keeps no tape (memory independent of K), and ``rhg`` gives the same
hypergradient (checked below). Compared with the best pair of a 4 x 4 grid on the same validation split; the
outer iterate with the lowest validation loss is kept (near the stability edge the loss turns chaotic).

    python examples/learn_lr_and_decay_fhg.py [--outer-steps 30] [--inner-steps 50]
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import bilevel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=30)
    p.add_argument("--inner-steps", type=int, default=50)
    args = p.parse_args(argv)

    X, t = load_digits(return_X_y=True)
    X = X / 16.0
    idx = np.random.default_rng(0).permutation(len(t))
    parts = {"train": idx[:200], "val": idx[200:700], "test": idx[700:]}
    data = {k: (torch.tensor(X[v]), torch.tensor(t[v])) for k, v in parts.items()}
    y0 = {"W": torch.zeros(64, 10, dtype=torch.float64), "b": torch.zeros(10, dtype=torch.float64)}

    def ce(y, split):
        inputs, labels = data[split]
        return F.cross_entropy(inputs @ y["W"] + y["b"], labels)

    def lower(x, y):
        return x[0].exp() * (ce(y, "train") + 0.5 * x[1].exp() * (y["W"] ** 2).sum())

    def upper(x, y):
        return ce(y, "val")

    def acc(y, split):
        inputs, labels = data[split]
        return float(((inputs @ y["W"] + y["b"]).argmax(1) == labels).double().mean())

    kw = dict(inner_steps=args.inner_steps, inner_lr=1.0)

    def fit(x):
        return bilevel.hypergrad(upper, lower, x, y0, method="fhg", **kw).y

    grid = [(a, b) for a in np.log([0.2, 0.8, 3.2, 12.8]) for b in np.log([1e-4, 1e-3, 1e-2, 1e-1])]
    scores = [float(ce(fit(torch.tensor(g, dtype=torch.float64)), "val")) for g in grid]
    x_grid = torch.tensor(grid[int(np.argmin(scores))], dtype=torch.float64)

    fwd = bilevel.hypergrad(upper, lower, x_grid, y0, method="fhg", **kw)
    rev = bilevel.hypergrad(upper, lower, x_grid, y0, method="rhg", **kw)
    assert torch.allclose(fwd.grad, rev.grad, rtol=1e-8, atol=1e-12)  # forward = reverse

    # the validation loss is lowest near the edge of the inner loop's stability, where it turns chaotic: keep the
    # outer iterate with the lowest validation loss (each record's "upper" is F at the x of that step)
    loop = bilevel.OuterLoop(x_grid, y0, method="fhg", outer_lr=0.05, **kw)
    best_val, best_x = float("inf"), x_grid
    for _ in range(args.outer_steps):
        x_now = loop.x.clone()
        record = loop.step(upper, lower)
        if record["upper"] < best_val:
            best_val, best_x = record["upper"], x_now
    print(f"{'':24s} {'lr':>7s} {'decay':>8s} {'val loss':>9s} {'val acc':>8s} {'test acc':>9s}")
    for name, x in (("grid (16 pairs)", x_grid), ("fhg, from the grid's", best_x)):
        y = fit(x)
        print(f"{name:24s} {float(x[0].exp()):7.3f} {float(x[1].exp()):8.1e} {float(ce(y, 'val')):9.4f} "
              f"{acc(y, 'val'):8.3f} {acc(y, 'test'):9.3f}")
    print(f"hypergradient at the grid's pair: fhg {fwd.grad.tolist()}, rhg {rev.grad.tolist()}")
    assert float(ce(fit(best_x), "val")) < min(scores)


if __name__ == "__main__":
    main()
