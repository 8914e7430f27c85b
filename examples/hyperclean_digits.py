"""Data hyper-cleaning on scikit-learn's digits: learn one weight per training sample, half of whose labels are
wrong, so that a classifier trained on the weighted samples does well on a clean validation split.

Upper variable x: one logit per training sample (weight sigmoid(x_i)). Lower level: a linear classifier trained
by K gradient steps on the weighted training loss. Upper objective: the validation loss of that classifier. The
hypergradient is reverse mode through the K steps (method "rhg"); `bilevel.OuterLoop` takes the outer steps.

    python examples/hyperclean_digits.py [--outer-steps 60] [--method rhg]
"""
import argparse

import torch
import torch.nn.functional as F

import bilevel
from bilevel.app.data import hyperclean_split


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=60)
    p.add_argument("--inner-steps", type=int, default=50)
    p.add_argument("--method", default="rhg", choices=sorted(bilevel.METHODS))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    s = hyperclean_split("digits", noise=0.5, seed=0).as_tensors()     # 500 train (50 % wrong) / 500 val / 797 test
    X_tr, t_tr, X_val, t_val = s["X_train"].double(), s["y_train"], s["X_val"].double(), s["y_val"]
    n, d = X_tr.shape

    def lower(x, w):
        losses = F.cross_entropy(X_tr @ w["W"] + w["b"], t_tr, reduction="none")
        return (torch.sigmoid(x) * losses).mean() + 1e-3 * (w["W"] ** 2).sum()

    def upper(x, w):
        return F.cross_entropy(X_val @ w["W"] + w["b"], t_val)

    def accuracy(w):
        return float(((s["X_test"].double() @ w["W"] + w["b"]).argmax(1) == s["y_test"]).double().mean())

    w0 = {"W": torch.zeros(d, 10, dtype=torch.float64), "b": torch.zeros(10, dtype=torch.float64)}
    kw = dict(inner_steps=args.inner_steps, inner_lr=0.5)
    loop = bilevel.OuterLoop(torch.zeros(n, dtype=torch.float64), w0, method=args.method, outer_lr=0.3,
                             warm_start=not bilevel.METHODS[args.method].learns_init, **kw)
    for _ in range(args.outer_steps):
        record = loop.step(upper, lower)
    x = loop.x

    # retrain from scratch on the final weights, and on all samples with weight 1 (no cleaning)
    train = lambda x: bilevel.hypergrad(upper, lower, x, w0, method="rhg", **kw).y       # res.y: the trained weights
    clean_acc, plain_acc = accuracy(train(x)), accuracy(train(torch.full((n,), 20.0, dtype=torch.float64)))
    flagged = torch.sigmoid(x) < 0.5
    wrong = s["corrupted"].bool()
    precision = float((flagged & wrong).sum() / flagged.sum().clamp(min=1))
    recall = float((flagged & wrong).sum() / wrong.sum())
    print(f"{args.method}, {args.outer_steps} outer steps: validation loss {record['upper']:.3f}")
    print(f"test accuracy: trained on all samples {plain_acc:.3f}, on the learned weights {clean_acc:.3f}")
    print(f"wrong labels flagged (weight < 1/2): precision {precision:.2f}, recall {recall:.2f}")
    assert clean_acc > plain_acc, "the learned weights should beat training on the corrupted labels"


if __name__ == "__main__":
    main()
