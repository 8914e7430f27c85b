"""Dataset distillation on scikit-learn's digits (Wang et al., 2018): learn 10 synthetic images, one per class,
and the inner step size, such that a network trained on them alone for K gradient steps does well on real data.

Upper variable x: ``{"images": 10 x 64, "log_lr": scalar}`` (labels fixed 0..9). Lower level: the cross-entropy of
a 64-32-10 MLP (``bilevel.models.functional``) on the 10 images, times exp(log_lr), so that the learned factor
multiplies the inner step size (capped at MAX_LR); K steps of gradient descent, unrolled exactly (method "rhg").
Upper objective: the cross-entropy of the trained MLP on the real training split. As in the paper, every outer step
trains from new random initializations (a few at once, vmapped), so that the images do not overfit one init: y is
the networks' displacement from that step's random draws, y0 = 0, and ``bilevel.OuterLoop`` takes the outer steps
with objectives that change at every step.

Every row of the table trains the same MLP by plain gradient descent from the same new random inits (train loss
and test accuracy: means over those inits): K steps on the distilled images (at the learned step size), on 10
random real training images, one per class (mean over a few draws), and on the 10 class means of the training
split (both at the step size of a grid up to MAX_LR that gives them the lowest training-split loss); many steps on
the whole training split at MAX_LR are the ceiling.

    python examples/distill_digits.py [--outer-steps 300] [--inner-steps 20] [--plot distilled.png]
"""
import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import bilevel

CLASSES, FEATURES, BASE_LR, MAX_LR = 10, 64, 0.1, 1.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=300)
    p.add_argument("--inner-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="random inits per outer step")
    p.add_argument("--inits", type=int, default=20, help="new random inits every row is evaluated on")
    p.add_argument("--draws", type=int, default=5, help="draws of 10 random real images")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--full-steps", type=int, default=300, help="GD steps of the ceiling, on the whole training split")
    p.add_argument("--plot", metavar="PATH", help="save the 10 distilled images to this PNG")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and far faster on cores that others share

    X, t = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(t))
    tr, te = idx[:1000], idx[1000:]
    mean, std = X[tr].mean(0), X[tr].std(0)
    std[std == 0] = 1.0  # pixels blank in every training image
    X = (X - mean) / std
    X_tr, t_tr, X_te, t_te = torch.tensor(X[tr]), torch.tensor(t[tr]), torch.tensor(X[te]), torch.tensor(t[te])
    labels = torch.arange(CLASSES)

    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, args.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(args.hidden, CLASSES)).double()
    model = torch.func.vmap(bilevel.models.functional(net), in_dims=(0, None))  # n stacked networks, shared inputs
    shapes = {k: v.shape for k, v in bilevel.models.parameters(net).items()}

    def random_inits(n, gen):  # PyTorch's default nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), n times
        fan_in = {k: net[int(k.split(".")[0])].in_features for k in shapes}
        return {k: (2 * torch.rand(n, *s, generator=gen, dtype=torch.float64) - 1) / math.sqrt(fan_in[k])
                for k, s in shapes.items()}

    def loss(params, inputs, targets):  # the sum over the stacked networks of their mean cross-entropies
        out = model(params, inputs)
        return F.cross_entropy(out.flatten(0, 1), targets.repeat(out.shape[0]), reduction="sum") / len(targets)

    def objectives(init):
        """F and f for the stacked random inits ``init``; y is the networks' displacement from them."""
        at = lambda y: {k: init[k] + y[k] for k in init}
        lower = lambda x, y: x["log_lr"].exp() * loss(at(y), x["images"], labels)  # sum: each net its own loss
        upper = lambda x, y: loss(at(y), X_tr, t_tr) / args.batch
        return upper, lower

    gen = torch.Generator().manual_seed(0)
    x0 = {"images": torch.randn(CLASSES, FEATURES, generator=gen, dtype=torch.float64),
          "log_lr": torch.zeros((), dtype=torch.float64)}
    y0 = {k: torch.zeros(args.batch, *s, dtype=torch.float64) for k, s in shapes.items()}
    # the step size is learned up to MAX_LR: left free it kept growing (while the images shrank) until, at a step
    # near 3.7, the inner loop diverged for some inits and the images never recovered
    bounds = {"log_lr": (None, math.log(MAX_LR / BASE_LR))}
    loop = bilevel.OuterLoop(x0, y0, method="rhg", outer_lr=0.05, inner_steps=args.inner_steps, inner_lr=BASE_LR,
                             x_bounds=bounds)
    record = {"upper": float("nan")}
    for _ in range(args.outer_steps):
        record = loop.step(*objectives(random_inits(args.batch, gen)))  # new random inits every outer step
    x = loop.x

    eval_inits = random_inits(args.inits, torch.Generator().manual_seed(1))

    def evaluate(inputs, targets, log_lr, steps=args.inner_steps):
        """(steps, step size, training-split loss, test accuracy), the last two means over the evaluation inits,
        after `steps` steps of gradient descent at step BASE_LR * exp(log_lr) on (inputs, targets)."""
        params, lr = eval_inits, BASE_LR * math.exp(log_lr)
        for _ in range(steps):
            g = torch.func.grad(loss)(params, inputs, targets)
            params = {k: params[k] - lr * g[k] for k in params}
        acc = (model(params, X_te).argmax(-1) == t_te).double().mean()
        return steps, lr, float(loss(params, X_tr, t_tr)) / args.inits, float(acc)

    def tuned(images):  # at the step size of the grid with the lowest training-split loss
        grid = np.log(np.array([0.05, 0.1, 0.2, 0.5, 1.0]) / BASE_LR)
        return min((evaluate(images, labels, g) for g in grid), key=lambda r: r[2])

    rows = [("distilled (learned lr)", evaluate(x["images"], labels, float(x["log_lr"])))]
    pick = np.random.default_rng(1)
    draws = [tuned(X_tr[[int(pick.choice(np.flatnonzero(t[tr] == c))) for c in range(CLASSES)]])
             for _ in range(args.draws)]
    rows.append((f"random real ({args.draws} draws)", tuple(np.mean(draws, axis=0))))
    rows.append(("class means", tuned(torch.stack([X_tr[t_tr == c].mean(0) for c in range(CLASSES)]))))
    rows.append((f"all {len(tr)} training images",
                 evaluate(X_tr, t_tr, math.log(MAX_LR / BASE_LR), steps=args.full_steps)))

    print(f"{args.outer_steps} outer steps ({args.batch} random inits each), last upper loss {record['upper']:.3f}")
    print(f"{'trained on':26s} {'GD steps':>8s} {'step':>6s} {'train loss':>11s} {'test acc':>9s}  "
          f"(means over {args.inits} random inits)")
    for name, (steps, lr, train_loss, acc) in rows:
        print(f"{name:26s} {steps:8.0f} {lr:6.3f} {train_loss:11.3f} {acc:9.3f}")

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, CLASSES, figsize=(CLASSES, 1.4))
        for c, ax in enumerate(axes):
            ax.imshow((x["images"][c].numpy() * std + mean).reshape(8, 8), cmap="gray_r")  # in pixel units
            ax.set_title(str(c))
            ax.axis("off")
        fig.savefig(args.plot, bbox_inches="tight")
        print(f"distilled images saved to {args.plot}")

    # the claim, at every budget from the smoke test's up: 10 distilled images teach more than 10 real ones
    assert rows[0][1][3] > rows[1][1][3], "the distilled images should beat 10 random real images"


if __name__ == "__main__":
    main()
