"""V-PBGD (Shen & Chen, ICML 2023, Algorithm 1): penalty-based bilevel gradient descent with the value-gap
penalty.

The bilevel problem as ``min_{x,y} F(x, y) + gamma (f(x, y) - v(x))``, ``v(x) = min_y f(x, y)``. One outer step at
(x, y) with the carried estimate y_hat of argmin f(x, .), beta = ``inner_lr``, T = ``inner_steps``:

    y_hat <- P(y_hat - beta grad_y f(x, y_hat))     (T steps; y_hat starts where the last step left it, or at y
                                                    with ``yhat_start="y"``; at y on the first step)
    res.grad = grad_x F(x, y) + gamma (grad_x f(x, y) - grad_x f(x, y_hat))     (grad v(x) ~ grad_x f(x, y_hat))
    res.y    = P(y - alpha (grad_y F(x, y) + gamma grad_y f(x, y)))

from the old (x, y) (a joint step). The paper steps x and y with one alpha <= 1/(L_F + gamma L_f); here x's step is
the outer optimizer's (take ``outer_lr`` proportional to 1/gamma) and y's is ``y_lr``, default
``inner_lr / (1 + gamma)`` (that bound with L_F = L_f = 1/inner_lr). The carried y_hat follows the authors' code
(the paper leaves its start free).

Cost per outer step: T + 2 gradients of f and one gradient of F; no Hessian-vector product; memory O(1) in T.
Assumptions: f(x, .) satisfies the PL condition / an error bound. The penalized problem's solutions approach the
bilevel solution as gamma grows (gamma = Theta(eps^-1/2) for eps-accuracy); the bias at a fixed gamma is O(1/gamma).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grad_y, value_and_grads

__all__ = ["step", "YHAT_START"]

YHAT_START = ("carried", "y")


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         y_lr: float, gamma: float, yhat_start: str) -> Estimate:
    """One V-PBGD step from (x, y) (module docstring); ``carry = {"y_hat": ...}``."""
    x, y = x.detach(), y.detach()
    y_hat = y if carry is None or yhat_start == "y" else carry["y_hat"].detach()
    with torch.no_grad():
        for _ in range(steps):
            y_hat = problem.project(y_hat - lr * grad_y(problem.lower, x, y_hat, False))
    upper, gFx, gFy = value_and_grads(problem.upper, x, y)
    check_finite(upper, "the upper objective")
    fy, gfx, gfy = value_and_grads(problem.lower, x, y)
    fhat, ghx, _ = value_and_grads(problem.lower, x, y_hat)
    dx = gFx + gamma * (gfx - ghx)
    with torch.no_grad():
        y_new = problem.project(y - y_lr * (gFy + gamma * gfy))
    info = {"upper": upper, "penalty_gap": fy - fhat}
    return Estimate(dx, None, y_new, info, {"y_hat": y_hat.detach()})
