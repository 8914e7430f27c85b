"""T-RHG: truncated back-propagation (Shaban et al., 2019).

The first K - T steps run without a tape; their iterate y_{K-T} is a constant. Reverse mode then goes
through the last T steps only:

    h_T = grad_x F + sum_{k=K-T}^{K-1} B_k^T A_{k+1}^T ... A_{K-1}^T grad_y F.

T = K is RHG; T = 0 keeps only grad_x F. Cost: K - T plain steps, T taped steps and a backward pass over
them; memory O(T).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validate import check_int
from ..dynamics.base import Dynamics, run
from ..problem import Problem
from .base import Estimate
from . import tape_free


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             truncate: int, wrt_init: bool = False, checkpoint: Optional[int] = None,
             engine: str = "autograd", compile_block: Optional[int] = None) -> Estimate:
    """Back-propagate through the last ``truncate`` (``0 <= truncate <= steps``) of ``steps`` inner steps, with the
    reverse-mode ``engine`` of :mod:`bilevel.estimators.tape_free` ("autograd": the tape)."""
    truncate = check_int("truncate", truncate, 0, steps)
    if wrt_init and truncate < steps:
        raise ValueError("a truncated unroll cannot differentiate the initialization (truncate < inner_steps)")
    x = x.detach()
    info: dict = {}
    state = run(dyn, x, dyn.init(x, y0.detach()), 0, steps - truncate, create_graph=False, info=info,
                total=steps)
    est = tape_free.reverse_estimator(engine, compile_block)(problem, dyn, x, state[0], steps, wrt_init=wrt_init,
                                              start=steps - truncate, state=state, checkpoint=checkpoint)
    if "lower_grad_norm_first" in info:
        est.info["lower_grad_norm_first"] = info["lower_grad_norm_first"]
    return est
