"""MAML with an Adam inner loop on sinusoid regression (Finn et al., 2017, Sec. 5.1).

Each task is y = A sin(t + phase), A in [0.1, 5], phase in [0, pi]; K = 10 support points in [-5, 5] train a
1-40-40-1 MLP for a few inner steps, and the loss on 10 query points of the same task is the upper objective. The
learned initialization (``method="maml"``, ``shared_init=True``) is trained by exact second-order reverse mode
through ``inner_optimizer="adam"``; every outer step draws a new meta-batch of tasks (``bilevel.OuterLoop``). On
new tasks it is compared with the network's random initialization and with a network pre-trained on all tasks at
once, each adapted by the same Adam steps.

    python examples/maml_sinusoid.py [--outer-steps 300]
"""
import argparse
import math

import torch

import bilevel

SHOTS, QUERIES, BATCH = 10, 10, 8


def tasks(n, gen):
    amp = 0.1 + 4.9 * torch.rand(n, 1, generator=gen)
    phase = math.pi * torch.rand(n, 1, generator=gen)
    ts = 10 * torch.rand(n, SHOTS, generator=gen) - 5
    tq = 10 * torch.rand(n, QUERIES, generator=gen) - 5
    return ts, amp * torch.sin(ts + phase), tq, amp * torch.sin(tq + phase)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outer-steps", type=int, default=300)
    p.add_argument("--inner-steps", type=int, default=5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                              torch.nn.Linear(40, 1))
    init = bilevel.models.parameters(net)

    def predict(params, t):  # one task's parameters, its inputs (n,) -> (n,)
        return torch.func.functional_call(net, params, (t.unsqueeze(-1),)).squeeze(-1)

    batched = torch.func.vmap(predict)

    def objectives(ts, ys, tq, yq):
        lower = lambda x, y: ((batched(y, ts) - ys) ** 2).mean(1).sum()  # the tasks' inner losses, summed
        upper = lambda x, y: ((batched(y, tq) - yq) ** 2).mean()
        return upper, lower

    inner = dict(inner_steps=args.inner_steps, inner_lr=0.01, inner_optimizer="adam")
    stacked = {k: v.expand(BATCH, *v.shape).clone() for k, v in init.items()}
    loop = bilevel.OuterLoop(torch.zeros(0), stacked, method="maml", shared_init=True, outer_lr=1e-3, **inner)
    for _ in range(args.outer_steps):
        loop.step(*objectives(*tasks(BATCH, gen)))
    learned = {k: v[0] for k, v in loop.y0.items()}  # the rows are tied: one initialization

    # baseline: one network regressed on every task's points at once (the "pretrained" model of the paper)
    pre = {k: v.clone().requires_grad_() for k, v in init.items()}
    opt = torch.optim.Adam(pre.values(), lr=1e-3)
    for _ in range(args.outer_steps):
        ts, ys, _, _ = tasks(BATCH, gen)
        opt.zero_grad()
        ((torch.func.vmap(predict, in_dims=(None, 0))(pre, ts) - ys) ** 2).mean().backward()
        opt.step()
    pre = {k: v.detach() for k, v in pre.items()}

    test = tasks(100, torch.Generator().manual_seed(1))
    print(f"{'initialization':22s} {'query MSE before':>17s} {'after ' + str(args.inner_steps) + ' Adam steps':>20s}")
    result = {}
    for name, start in (("random", init), ("pretrained", pre), ("MAML (Adam inner)", learned)):
        upper, lower = objectives(*test)
        y0 = {k: v.expand(100, *v.shape).clone() for k, v in start.items()}
        before = float(upper(None, y0))
        after = float(bilevel.hypergrad(upper, lower, torch.zeros(0), y0, method="maml", **inner).info["upper"])
        result[name] = after
        print(f"{name:22s} {before:17.3f} {after:20.3f}")
    assert result["MAML (Adam inner)"] < min(result["random"], result["pretrained"])


if __name__ == "__main__":
    main()
