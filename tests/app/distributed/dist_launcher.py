"""Run a few outer steps of small hand-made bilevel problems, single-process or under torchrun.

    python dist_launcher.py --mode meta --dtype float64 --out res.pt            # single process
    torchrun --standalone --nproc_per_node=2 dist_launcher.py --mode meta ...   # 2 ranks, same results

``meta``: a few-shot-like problem, a meta-batch of B independent tasks (shared features tanh(A W), one ridge
head per task), upper = mean over tasks, sharded by rank (task parallel, DistributedOuterLoop).
``data``: a hyper-cleaning-like problem, per-sample weights x and one shared linear model y, lower / upper
= sums over samples, sharded by rank (data parallel, bilevel.parallel.data_parallel).
Rank 0 writes ``{method: {"grads": [...], "xs": [...], "records": [...]} or {"error": str}}`` with torch.save.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

import torch

import bilevel
from bilevel import parallel as D
from bilevel.api import OuterLoop

B, N_SUP, N_QRY, DIM, HID = 5, 6, 7, 4, 3   # meta problem: 5 tasks -> shards of 3 and 2 on 2 ranks
N_TRAIN, N_VAL = 9, 7                          # data problem


def meta_problem(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(B, N_SUP, DIM, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(B, N_SUP, generator=g, dtype=torch.float64).to(dtype)
    Q = torch.randn(B, N_QRY, DIM, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(B, N_QRY, generator=g, dtype=torch.float64).to(dtype)
    x0 = {"W": (0.5 * torch.randn(DIM, HID, generator=g, dtype=torch.float64)).to(dtype)}
    y0 = (0.1 * torch.randn(B, HID, generator=g, dtype=torch.float64)).to(dtype)

    def objectives(lo: int, hi: int):
        def lower(x, y):
            pred = torch.einsum("bnh,bh->bn", torch.tanh(A[lo:hi] @ x["W"]), y[lo:hi])
            return ((pred - b[lo:hi]) ** 2).mean(dim=1).sum() + 0.1 * (y[lo:hi] ** 2).sum()

        def upper(x, y):
            pred = torch.einsum("bnh,bh->bn", torch.tanh(Q[lo:hi] @ x["W"]), y[lo:hi])
            return ((pred - c[lo:hi]) ** 2).mean(dim=1).sum() / B

        return upper, lower

    return x0, y0, objectives


def data_problem(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    Xtr = torch.randn(N_TRAIN, DIM, generator=g, dtype=torch.float64).to(dtype)
    ttr = torch.randn(N_TRAIN, generator=g, dtype=torch.float64).to(dtype)
    Xva = torch.randn(N_VAL, DIM, generator=g, dtype=torch.float64).to(dtype)
    tva = torch.randn(N_VAL, generator=g, dtype=torch.float64).to(dtype)
    x0 = torch.zeros(N_TRAIN, dtype=dtype)
    y0 = {"w": torch.zeros(DIM, dtype=dtype), "b": torch.zeros((), dtype=dtype)}

    def objectives(rank: int, world: int):
        lo, hi = D.shard_range(N_TRAIN, rank, world)
        vlo, vhi = D.shard_range(N_VAL, rank, world)
        reg = 0.05 if rank == 0 else 0.0  # an unsharded term: added by one rank only

        def lower(x, y):
            r = Xtr[lo:hi] @ y["w"] + y["b"] - ttr[lo:hi]
            return (torch.sigmoid(x[lo:hi]) * r * r).sum() / N_TRAIN + reg * (y["w"] ** 2).sum()

        def upper(x, y):
            r = Xva[vlo:vhi] @ y["w"] + y["b"] - tva[vlo:vhi]
            return (r * r).sum() / N_VAL

        return upper, lower

    return x0, y0, objectives


def flat(tree: Any) -> torch.Tensor:
    if isinstance(tree, dict):
        return torch.cat([tree[k].reshape(-1) for k in sorted(tree)])
    return tree.reshape(-1)


def run_method(mode: str, method: str, dtype: torch.dtype, steps: int, ctx: D.DistContext) -> Dict[str, Any]:
    common = dict(method=method, outer_lr=0.05, outer_optimizer="adam", inner_steps=5, inner_lr=0.2)
    grads: List[torch.Tensor] = []
    if mode == "meta":
        x0, y0, make = meta_problem(dtype)
        lo, hi = D.shard_range(B, ctx.rank, ctx.world_size)
        upper, lower = make(lo, hi)
        loop = D.DistributedOuterLoop(x0, y0, ctx=ctx, **common)
        reduce = loop.reduce_grads

        def spy(gx, gy):
            out = reduce(gx, gy)
            grads.append(torch.cat([out[0].detach().clone().reshape(-1)]
                                   + ([] if out[1] is None else [out[1].detach().reshape(-1)])))
            return out

        loop.reduce_grads = spy
    else:
        x0, y0, make = data_problem(dtype)
        up, lw = make(ctx.rank, ctx.world_size)
        upper, lower = D.data_parallel(up, ctx), D.data_parallel(lw, ctx)

        def spy(gx, gy):
            grads.append(torch.cat([gx.detach().clone().reshape(-1)] + ([] if gy is None else [gy.reshape(-1)])))
            return gx, gy

        loop = OuterLoop(x0, y0, reduce_grads=spy, **common)
    xs = [flat(loop.x)]
    records = []
    for _ in range(steps):
        records.append({k: v for k, v in loop.step(upper, lower).items() if isinstance(v, (int, float))})
        xs.append(flat(loop.x))
    return {"grads": [g.to(torch.float64) for g in grads], "xs": [x.to(torch.float64) for x in xs],
            "y0": flat(loop.y0).to(torch.float64), "records": records}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("meta", "data"), required=True)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--methods", default=",".join(sorted(bilevel.METHODS)))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx = D.init()
    dtype = getattr(torch, args.dtype)
    results: Dict[str, Any] = {"world_size": ctx.world_size}
    for method in args.methods.split(","):
        try:
            results[method] = run_method(args.mode, method, dtype, args.steps, ctx)
        except Exception as err:  # reported, compared by the test
            results[method] = {"error": f"{type(err).__name__}: {err}"}
    if ctx.is_main:
        torch.save(results, args.out)
    D.shutdown(synchronize=True)


if __name__ == "__main__":
    main()
