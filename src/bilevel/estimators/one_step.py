"""DARTS's one-step unroll (Liu, Simonyan & Yang, ICLR 2019, Eq. 6-8): the hypergradient of one look-ahead step.

The inner dynamics run K steps without a tape from the carried y to y_K (the weight update of the outer step).
With y_K held fixed, the look-ahead ``y' = y_K - xi grad_y f(x, y_K)`` gives the one-step-unroll objective
``F(x, y'(x))``, whose gradient is

    d = grad_x F(x, y') - xi grad^2_xy f(x, y_K) v,     v = grad_y F(x, y').

DARTS replaces the mixed second derivative by a central finite difference along v (Eq. 8):

    grad^2_xy f(x, y_K) v  ~  (grad_x f(x, y+) - grad_x f(x, y-)) / (2 eps),  y+- = y_K +- eps v,
    eps = epsilon / ||v||      (DARTS: epsilon = 0.01),

so no Hessian-vector product is taken: the error is O(eps^2) (a central difference). ``exact=True`` takes the
mixed product by autograd instead: the exact gradient of ``F(x, y_K - xi grad_y f(x, y_K))`` for the tests.
``xi = 0`` is DARTS's first-order variant, ``grad_x F(x, y_K)``.

Cost per outer step: K graph-free inner steps, one gradient of f (the look-ahead), one gradient of F, and two
x-gradients of f (finite differences) -- or one Hessian-vector product with ``exact=True``. Memory O(1) in K.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..dynamics.base import Dynamics, run
from ..problem import Problem, grad_y, grads_or_zeros, value_and_grads
from .base import Estimate, check_finite

__all__ = ["estimate", "value"]


def _lookahead(problem: Problem, x: torch.Tensor, y: torch.Tensor, xi: float) -> torch.Tensor:
    return y if xi == 0.0 else y - xi * grad_y(problem.lower, x, y, False)


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *, xi: float,
             epsilon: float, exact: bool, wrt_init: bool = False) -> Estimate:
    """The DARTS direction at y_K = K steps of ``dyn`` from ``y0`` (module docstring); ``res.y`` is y_K."""
    if wrt_init:
        raise ValueError("darts does not differentiate the initialization")
    info: dict = {}
    x = x.detach()
    y = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False, info=info)[0].detach()
    ahead = _lookahead(problem, x, y, xi).detach()
    upper, gx, v = value_and_grads(problem.upper, x, ahead)
    check_finite(upper, f"the upper objective at the look-ahead after {steps} inner steps")
    info["upper"] = upper
    if xi == 0.0:
        return Estimate(gx, None, y, info)
    if exact:
        with torch.enable_grad():
            xl = x.clone().requires_grad_()
            yl = y.clone().requires_grad_()
            (gy,) = torch.autograd.grad(problem.lower(xl, yl), yl, create_graph=True)
            (mixed,) = grads_or_zeros(gy, (xl,), grad_outputs=v)
    else:
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0.0:
            return Estimate(gx, None, y, info)
        eps = epsilon / norm
        _, gx_plus, _ = value_and_grads(problem.lower, x, y + eps * v)
        _, gx_minus, _ = value_and_grads(problem.lower, x, y - eps * v)
        mixed = (gx_plus - gx_minus) / (2.0 * eps)
        info["fd_eps"] = eps
    return Estimate(gx - xi * mixed.detach(), None, y, info)


def value(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
          xi: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F(x, y'), y_K)``: the one-step-unroll objective at the y_K reached from ``y0`` at this x."""
    x = x.detach()
    y = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False)[0].detach()
    with torch.no_grad():
        return problem.upper(x, _lookahead(problem, x, y, xi)), y
