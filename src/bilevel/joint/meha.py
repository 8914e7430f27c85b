"""MEHA (Liu et al., ICML 2024): the Moreau-envelope reformulation, single loop, Hessian-free.

With the Moreau envelope ``v_gamma(x, y) = min_theta f(x, theta) + ||theta - y||^2 / (2 gamma)``, the bilevel
problem is ``min F`` s.t. ``f(x, y) - v_gamma(x, y) <= 0``, penalized as ``F / c_k + f - v_gamma`` with
``c_k = c (k + 1)^p`` growing. Outer step k, in the paper's Gauss-Seidel order theta -> x -> y, with
eta = ``inner_lr``, beta = ``y_lr`` (default ``inner_lr``) and x's step the outer optimizer's:

    theta <- theta - eta (grad_y f(x_k, theta) + (theta - y_k) / gamma)        (``inner_steps`` times; paper: 1)
    res.grad = grad_x F(x_k, y_k) / c_k + grad_x f(x_k, y_k) - grad_x f(x_k, theta)
    y_{k+1} = P(y_k - beta (grad_y F(x_{k+1}, y_k) / c_k + grad_y f(x_{k+1}, y_k) - (y_k - theta) / gamma))

y's step needs the new x_{k+1}, which exists only once the outer optimizer has stepped: it is taken at the start
of the next outer step (so ``res.y`` is y_k, and a run's last y-step is the one the next step would take); theta
(theta_0 = y_0) and k are carried. With an SGD outer optimizer this is the paper's iteration exactly.

Cost per outer step: ``inner_steps`` + 3 gradients of f and 2 of F; no Hessian-vector product; memory O(1).
Assumptions: f(x, .) rho-weakly convex with gamma < 1 / (2 rho) (any gamma for a convex f), eta below
2 gamma / (gamma (L_f - rho) + 2); then with p in (0, 1/2) the stationarity residual decays as O(K^-(1-2p)/2) and
the constraint violation as O(K^-p). The bias of a fixed penalty c is O(1/c).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grad_y, value_and_grads

__all__ = ["step"]


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         y_lr: float, gamma: float, c: float, p: float) -> Estimate:
    """One MEHA step at x (module docstring); ``carry = {"theta": ..., "k": ...}``."""
    x, y = x.detach(), y.detach()
    if carry is None:
        theta, k = y, 0
    else:  # the previous step's y-update, at the new x (Gauss-Seidel)
        theta, k = carry["theta"].detach(), int(carry["k"])
        c_prev = c * k ** p
        with torch.no_grad():
            d = (grad_y(problem.upper, x, y, False) / c_prev + grad_y(problem.lower, x, y, False)
                 - (y - theta) / gamma)
            y = problem.project(y - y_lr * d)
    c_k = c * (k + 1) ** p
    with torch.no_grad():
        for _ in range(steps):
            theta = theta - lr * (grad_y(problem.lower, x, theta, False) + (theta - y) / gamma)
    upper, gFx, _ = value_and_grads(problem.upper, x, y)
    check_finite(upper, "the upper objective")
    fy, gfx, _ = value_and_grads(problem.lower, x, y)
    _, gtx, _ = value_and_grads(problem.lower, x, theta)
    info = {"upper": upper, "meha_c": c_k}
    return Estimate(gFx / c_k + gfx - gtx, None, y, info, {"theta": theta.detach(), "k": torch.tensor(k + 1)})
