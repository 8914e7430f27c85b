"""SOBA, SABA and SRBA with data_parallel over the torchrun ranks (or single-process); rank 0 saves the final x, y.

usage: [torchrun --standalone --nproc_per_node=2] stochastic_dp_launcher.py OUT
"""
import sys

import torch

from bilevel import parallel, stochastic
from bilevel.problems.finite_sum import make_finite_sum_quadratic

ctx = parallel.init("gloo")
pb = make_finite_sum_quadratic(30, 20, 4, 3, noise=0.3, seed=1)
out = {"world_size": ctx.world_size}
for method in ("soba", "saba", "srba"):
    res = stochastic.solve(pb.upper, pb.lower, torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                           method=method, n_upper=20, n_lower=30, batch_size=6, outer_steps=25, seed=2,
                           data_parallel=ctx)
    out[method] = (res.x, res.y, res.history[-1]["inner_oracles"])
if ctx.rank == 0:
    torch.save(out, sys.argv[1])
parallel.shutdown(synchronize=True)
