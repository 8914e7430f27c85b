"""Implicit differentiation at an approximate lower-level solution (CG: Pedregosa 2016, Rajeswaran et al.
2019; Neumann: Lorraine et al. 2020).

At a root of the optimality condition T(x, y) = grad_y f(x, y) = 0 the implicit function theorem gives

    d phi / dx = grad_x F - (d2f/dxdy) v,      (d2f/dy2) v = grad_y F,

evaluated at y = y_K. v comes from a swappable linear solver ``solve(matvec, b)`` using Hessian-vector
products only. :func:`root_vjp` is that rule for any optimality function. Cost: K plain inner steps (no
tape: memory independent of K), one taped gradient of f at y_K, and one Hessian-vector product per
solver iteration plus one mixed product.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

from ..dynamics.base import Dynamics, run
from ..problem import Problem, grad_y
from .base import Estimate, check_finite, grads_or_zeros

Solver = Callable[..., Tuple[torch.Tensor, dict]]


def root_vjp(optimality: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, cotangent: torch.Tensor, solve: Solver) -> Tuple[torch.Tensor, dict]:
    """Vector-Jacobian product of the implicit map x -> y(x) defined by ``optimality(x, y(x)) = 0``.

    Returns ``-(dT/dx)^T v`` with ``(dT/dy)^T v = cotangent``, i.e. ``cotangent^T dy/dx``, and the
    solver's info. Assumes dT/dy symmetric (true for T = grad_y f), so ``matvec`` is a vector-Jacobian
    product of T in y.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = y.detach().requires_grad_()
        t = optimality(x, y)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            (hv,) = grads_or_zeros(t, (y,), grad_outputs=v, retain_graph=True)
            return hv

        v, info = solve(matvec, cotangent)
        (cross,) = grads_or_zeros(t, (x,), grad_outputs=v)
    return -cross, info


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
