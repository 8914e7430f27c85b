"""Implicit differentiation at an approximate lower-level solution (CG: Pedregosa 2016, Rajeswaran et al.
2019; Neumann: Lorraine et al. 2020).

At a root of the optimality condition T(x, y) = grad_y f(x, y) = 0 the implicit function theorem gives

    d phi / dx = grad_x F - (d2f/dxdy) v,      (d2f/dy2) v = grad_y F,

evaluated at y = y_K. v comes from a swappable linear solver ``solve(matvec, b)`` using Hessian-vector
products only; :func:`bilevel.implicit_diff.root_vjp` is that rule for any optimality function, and this
estimator applies it to T = grad_y f. Cost: K plain inner steps (no tape: memory independent of K), one taped
gradient of f at y_K, and one Hessian-vector product per solver iteration plus one mixed product.
"""
from __future__ import annotations

import torch

from ..dynamics.base import Dynamics, run
from ..implicit_diff import Solver, root_vjp  # noqa: F401 (root_vjp: also importable from here)
from ..problem import Problem, grad_y
from .base import Estimate, check_finite, grads_or_zeros


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             solve: Solver, wrt_init: bool = False) -> Estimate:
    """Implicit hypergradient at y_K with the given linear solver."""
    if wrt_init:
        raise ValueError("implicit differentiation does not depend on the initialization")
    x = x.detach()
    info: dict = {}
    y = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False, info=info)[0].detach()
    with torch.enable_grad():
        xl = x.requires_grad_()
        yl = y.clone().requires_grad_()
        upper = problem.upper(xl, yl)
        check_finite(upper.detach(), f"the upper objective after {steps} inner steps")
        gx, gy = grads_or_zeros(upper, (xl, yl))
    xl = xl.detach()

    def optimality(xv, yv):
        return grad_y(problem.lower, xv, yv, create_graph=True)

    indirect, solve_info = root_vjp(optimality, xl, y, gy, solve)
    grad = gx + indirect
    info.update({f"solver_{k}": v for k, v in solve_info.items()})
    info["upper"] = upper.detach()
    return Estimate(grad, None, y, info)
