"""Meta-Weight-Net data reweighting (Shu et al., 2019) on scikit-learn's digits with noisy labels.

The digits (standardized) are split into 1197 training samples, 40 % of whose labels are replaced by another
class drawn uniformly at random, a clean meta set of 100 (10 per class) and 500 test samples. A 64-64-10 MLP
classifier (the lower variable y, a dict of parameters) is trained on the training set with every sample's loss
weighted by a weighting network V (the upper variable x, a 1-32-1 MLP with a sigmoid output, also a dict) that
maps the sample's cross-entropy, detached as in the paper, to a weight in (0, 1); as in the paper's code the
weights are normalized over the mini-batch:

    lower f(x, y) = sum_i w_i CE_i(y) / sum_i w_i,  w_i = V_x(CE_i(y).detach()),  over a training mini-batch
    upper F(x, y) = mean_j CE_j(y)                                                over a meta-set mini-batch

Every outer step draws new mini-batches and hands ``bilevel.OuterLoop.step`` objectives closed over them; with
``warm_start=True`` the classifier carries over from step to step, so it is trained by ``--inner-steps`` SGD
updates per outer step while the hypergradient, reverse mode through those updates ("rhg", or "trhg"), trains V
with Adam. It is compared with the same classifier trained by the same SGD updates with uniform weights, which
ends up fitting the wrong labels, and with one trained on the clean meta set alone. V learns to give the
samples with a large loss, mostly the wrong labels, small weights.

    python examples/reweight_digits.py [--outer-steps 500] [--inner-steps 2] [--method rhg]
"""
import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import bilevel

NOISE, N_TEST, META_PER_CLASS = 0.4, 500, 10
BATCH, META_BATCH, LR, OUTER_LR = 100, 50, 0.1, 1e-3
#: from this many classifier updates (outer x inner steps) on, the reweighted classifier beats both baselines
FULL_BUDGET = 600


def data(seed=0):
    """Standardized digits: train (NOISE of its labels wrong), its corruption mask, clean meta set, test."""
    X, t = load_digits(return_X_y=True)
    X, t = torch.tensor(X, dtype=torch.float64), torch.tensor(t)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(t), generator=gen)
    test, rest = perm[:N_TEST], perm[N_TEST:]
    meta = torch.cat([rest[t[rest] == c][:META_PER_CLASS] for c in range(10)])
    train = rest[~torch.isin(rest, meta)]
    mean, std = X[train].mean(0), X[train].std(0)
    X = (X - mean) / torch.where(std > 0, std, torch.ones_like(std))        # a few border pixels are always 0
    noisy = t[train].clone()
    wrong = torch.randperm(len(train), generator=gen)[:round(NOISE * len(train))]
    noisy[wrong] = (noisy[wrong] + torch.randint(1, 10, (len(wrong),), generator=gen)) % 10   # another class
    corrupted = torch.zeros(len(train), dtype=torch.bool)
    corrupted[wrong] = True
    return X[train], noisy, corrupted, X[meta], t[meta], X[test], t[test]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=500)
    p.add_argument("--inner-steps", type=int, default=2)
    # the implicit methods (cg, neumann) assume y at a minimum of f, which a few warm-started steps on a
    # non-convex f do not reach; fhg gives rhg's numbers at one forward tangent per coordinate of x (97 here)
    p.add_argument("--method", default="rhg", choices=["rhg", "trhg"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and far faster on cores that others share
    torch.manual_seed(0)
    X_tr, t_tr, corrupted, X_meta, t_meta, X_te, t_te = data()
    n = len(t_tr)

    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).double()
    vnet = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1),
                               torch.nn.Sigmoid()).double()
    model, weight_net = bilevel.models.functional(net), bilevel.models.functional(vnet)
    y0, x0 = bilevel.models.parameters(net), bilevel.models.parameters(vnet)

    def weights(x, losses):  # V_x(loss) in (0, 1), one per sample; the loss enters as data, not through y
        return weight_net(x, losses.detach().unsqueeze(1)).squeeze(1)

    def objectives(i, j):  # the objectives of one outer step, on training batch i and meta batch j
        def lower(x, y):
            ce = F.cross_entropy(model(y, X_tr[i]), t_tr[i], reduction="none")
            w = weights(x, ce)
            return (w * ce).sum() / w.sum()

        def upper(x, y):
            return F.cross_entropy(model(y, X_meta[j]), t_meta[j])
        return upper, lower

    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(n, (BATCH,), generator=gen), torch.randint(len(t_meta), (META_BATCH,), generator=gen))
               for _ in range(args.outer_steps)]
    loop = bilevel.OuterLoop(x0, y0, method=args.method, outer_lr=OUTER_LR, inner_steps=args.inner_steps,
                             inner_lr=LR, warm_start=True)
    for i, j in batches:
        record = loop.step(*objectives(i, j))
    x, y_mwn = loop.x, loop.y0  # y0: with warm_start, the classifier after the last step's inner updates

    def sgd(X, t, draws):  # the same SGD updates (batches, count, step size) with uniform weights
        y = {k: v.clone().requires_grad_() for k, v in y0.items()}
        for idx in draws:
            for _ in range(args.inner_steps):
                grads = torch.autograd.grad(F.cross_entropy(model(y, X[idx]), t[idx]), list(y.values()))
                with torch.no_grad():
                    for v, g in zip(y.values(), grads):
                        v -= LR * g
        return {k: v.detach() for k, v in y.items()}

    acc = {}
    for name, y in (("uniform weights", sgd(X_tr, t_tr, [i for i, _ in batches])),
                    ("clean meta set only", sgd(X_meta, t_meta, [j for _, j in batches])),
                    ("Meta-Weight-Net", y_mwn)):
        with torch.no_grad():
            acc[name] = float((model(y, X_te).argmax(1) == t_te).double().mean())
    with torch.no_grad():
        w = weights(x, F.cross_entropy(model(y_mwn, X_tr), t_tr, reduction="none"))
        grid = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
        curve = ", ".join(f"{float(g):g} -> {float(v):.3f}" for g, v in zip(grid, weights(x, grid)))
    w_clean, w_wrong = float(w[~corrupted].mean()), float(w[corrupted].mean())

    updates = args.outer_steps * args.inner_steps
    print(f"{args.method}, {args.outer_steps} outer steps x {args.inner_steps} inner steps ({updates} classifier "
          f"updates); {n} training samples, {NOISE:.0%} wrong labels; meta set {len(t_meta)}")
    print(f"{'classifier trained on':22s} {'test accuracy':>14s}")
    for name, a in acc.items():
        print(f"{name:22s} {a:14.3f}")
    print(f"learned weight V(loss): {curve}")
    print(f"mean weight on the training samples: clean labels {w_clean:.3f}, wrong labels {w_wrong:.3f}")
    assert w_clean > w_wrong, "the weight net should down-weight the wrong labels"
    if updates >= FULL_BUDGET:  # shorter runs: the baselines have not yet fallen behind
        assert acc["Meta-Weight-Net"] > max(acc["uniform weights"], acc["clean meta set only"]), \
            "reweighting should beat uniform weights and training on the meta set alone"


if __name__ == "__main__":
    main()
