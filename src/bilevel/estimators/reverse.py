"""RHG: reverse-mode differentiation through the whole unroll (Franceschi et al., 2017; Maclaurin et al., 2015).

phi_K(x) = F(x, y_K(x)) with y_{k+1} = Phi_k(x, y_k). Back-propagation through the tape gives

    d phi_K / dx = grad_x F + sum_{k<K} B_k^T A_{k+1}^T ... A_{K-1}^T grad_y F,
    A_k = d Phi_k / d y,  B_k = d Phi_k / d x,

exactly (to round-off) for whatever dynamics Phi is. Cost: K forward steps with a tape plus one backward
pass (about 2-3x the plain inner loop in time); memory O(K) iterates.
The gradient w.r.t. the initialization y_0 comes from the same backward pass.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..dynamics.base import Dynamics, State, run
from ..problem import Problem
from .base import Estimate, check_finite, grads_or_zeros


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False, start: int = 0, state: Optional[State] = None) -> Estimate:
    """Exact gradient of F(x, y_K(x, y0)) w.r.t. x (and y0 when ``wrt_init``).

    With ``start > 0`` the unroll resumes at step ``start`` from ``state`` (whose iterate is ``y0``), the
    earlier steps being constants: this is how truncation reuses this estimator.
    """
    info: dict = {}
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y0 = y0.detach().requires_grad_(wrt_init)
        state = dyn.init(x, y0) if state is None else (y0,) + tuple(s.detach() for s in state[1:])
        state = run(dyn, x, state, start, steps, create_graph=True, info=info)
        y = state[0]
        upper = problem.upper(x, y)
        check_finite(upper.detach(), f"the upper objective after {steps} inner steps")
        inputs = (x, y0) if wrt_init else (x,)
        grads = grads_or_zeros(upper, inputs)
    info["upper"] = upper.detach()
    return Estimate(grads[0], grads[1] if wrt_init else None, y.detach(), info)


def value(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F(x, y_K), y_K)`` without a tape: the objective this estimator differentiates."""
    x = x.detach()
    state = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False)
    with torch.no_grad():
        return problem.upper(x, state[0]), state[0]
