"""IGA, the gradient-response hypergradient (the BSG-1 direction of Giovannelli, Kent & Vicente, 2021): the
implicit term with rank-one models of the second derivatives.

The exact hypergradient ``grad_x F - grad^2_xy f (grad^2_yy f)^-1 grad_y F`` with ``grad^2_yy f ~ g g'`` and
``grad^2_xy f ~ grad_x f g'`` (g = grad_y f) becomes, at y_K (K graph-free inner steps from the carried y):

    d = grad_x F(x, y_K) - rho grad_x f(x, y_K),    rho = <grad_y F(x, y_K), g> / ||g||^2   (0 when g = 0)

Cost: K graph-free inner steps, one gradient of F and one of f; no Hessian-vector product. An approximation: exact
only where the rank-one models hold; its bias does not vanish with K, and near the follower's minimizer (g -> 0)
rho is ill-conditioned.
"""
from __future__ import annotations

import torch

from ..dynamics.base import Dynamics, run
from ..problem import Problem, value_and_grads
from .base import Estimate, check_finite

__all__ = ["estimate"]


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False) -> Estimate:
    """The IGA direction at y_K (module docstring)."""
    if wrt_init:
        raise ValueError("iga does not differentiate the initialization")
    info: dict = {}
    x = x.detach()
    y = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False, info=info)[0].detach()
    upper, gFx, gFy = value_and_grads(problem.upper, x, y)
    check_finite(upper, f"the upper objective after {steps} inner steps")
    _, gfx, gfy = value_and_grads(problem.lower, x, y)
    n2 = float(gfy @ gfy)
    rho = float(gFy @ gfy) / n2 if n2 > 0.0 else 0.0
    info.update(upper=upper, iga_rho=rho)
    return Estimate(gFx - rho * gfx, None, y, info)
