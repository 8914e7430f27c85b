"""A stochastic run with checkpoints, slowed down so that a test can SIGKILL it mid-way (tests/core/test_stochastic_resume.py).

usage: python stochastic_victim.py METHOD CHECKPOINT OUT STEPS DELAY
"""
import sys
import time

import torch

from bilevel import stochastic
from bilevel.problems.finite_sum import make_finite_sum_quadratic

method, ckpt, out, steps, delay = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
pb = make_finite_sum_quadratic(40, 30, 4, 3, mu=0.5, noise=0.2, seed=2)


def lower(x, y, idx):
    time.sleep(delay)  # slows the run down; changes no number
    return pb.lower(x, y, idx)


res = stochastic.solve(pb.upper, lower, torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64),
                       method=method, n_upper=30, n_lower=40, batch_size=7, outer_steps=steps, log_every=3,
                       checkpoint=ckpt, checkpoint_every=4)
torch.save({"x": res.x, "y": res.y, "history": [{k: v for k, v in h.items() if k != "time"} for h in res.history]},
           out)
