"""BOME (Liu, Ye, Wright, Stone & Liu, NeurIPS 2022, Algorithm 1): a first-order value-function method.

The bilevel problem as ``min_{x,y} F(x, y)`` s.t. ``q(x, y) = f(x, y) - min_y' f(x, y') <= 0``. One outer step at
(x, y), with s = ``inner_lr``, T = ``inner_steps``:

    theta_0 = y,  theta_{t+1} = P(theta_t - s grad_y f(x, theta_t))   (t < T; restarted at y every step)
    q_hat(x, y) = f(x, y) - f(x, theta_T)                             (theta_T held constant)
    g_q = (grad_x f(x, y) - grad_x f(x, theta_T),  grad_y f(x, y)),   g_F = (grad_x F(x, y), grad_y F(x, y))
    phi = eta ||g_q||^2   (phi="grad_norm", the paper's default)   or   eta q_hat(x, y)   (phi="value")
    lam = max(phi - <g_F, g_q>, 0) / ||g_q||^2    (0 when g_q = 0)
    d = g_F + lam g_q:   res.grad = d_x,   res.y = P(y - y_lr d_y)

Norms and inner products are over (x, y) jointly. The paper steps x and y with one step xi; here x's step is the
outer optimizer's (``outer_lr``) and y's is ``y_lr`` (default ``inner_lr``, benchmark_bilevel's choice: its BOME
steps y and theta with the same step and x with that step over ``outer_ratio``). Both come from the old (x, y).

Cost per outer step: T + 2 gradients of f (theta's loop, f at y, grad_x f at theta_T) and one gradient of F; no
Hessian-vector product; memory O(1) in T. Convergence (the paper's Theorem): with f(x, .) satisfying the PL
condition, xi = O(K^-1/2) and T = O(log K), ``||g_F + lam g_q||^2 + q`` decays as O(K^-1/4); eta fixed.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grad_y, value_and_grads

__all__ = ["step", "PHI"]

PHI = ("grad_norm", "value")


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         y_lr: float, eta: float, phi: str) -> Estimate:
    """One BOME step from (x, y) (module docstring); ``carry`` is unused (BOME carries y alone)."""
    x, y = x.detach(), y.detach()
    theta = y
    with torch.no_grad():
        for _ in range(steps):
            theta = problem.project(theta - lr * grad_y(problem.lower, x, theta, False))
    upper, gFx, gFy = value_and_grads(problem.upper, x, y)
    check_finite(upper, "the upper objective")
    fy, gfx, gfy = value_and_grads(problem.lower, x, y)
    ftheta, gtx, _ = value_and_grads(problem.lower, x, theta)
    gqx, gqy = gfx - gtx, gfy
    norm2 = float(gqx @ gqx + gqy @ gqy)
    gap = float(fy - ftheta)
    if norm2 > 0.0:
        target = eta * norm2 if phi == "grad_norm" else eta * gap
        lam = max(target - float(gFx @ gqx + gFy @ gqy), 0.0) / norm2
    else:
        lam = 0.0
    dx, dy = gFx + lam * gqx, gFy + lam * gqy
    with torch.no_grad():
        y_new = problem.project(y - y_lr * dy)
    info = {"upper": upper, "bome_lambda": lam, "value_gap": gap}
    return Estimate(dx, None, y_new, info)
