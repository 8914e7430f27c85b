"""F2SA (Kwon, Kwon, Wright & Nowak, ICML 2023, Algorithm 1): a fully first-order penalty method with a growing
multiplier.

``L_lam(x, y) = F(x, y) + lam (f(x, y) - v(x))``; its minimum over y, ``L*_lam(x)``, has the gradient
``grad_x F(x, y*_lam) + lam (grad_x f(x, y*_lam) - grad_x f(x, y*))``, which is O(1/lam) from the hypergradient.
F2SA tracks ``y*`` with z and ``y*_lam`` with y, both carried, and lets lam grow. Outer step k (0, 1, ...) at x,
T = ``inner_steps``:

    lam_k = lam (k + 1)^b,   alpha_k = y_lr (k + 1)^-a,   gamma = inner_lr      (b = lam_power, a = y_lr_power)
    T times:  z <- P(z - gamma grad_y f(x, z)),   y <- P(y - alpha_k (grad_y F(x, y) + lam_k grad_y f(x, y)))
    res.grad = grad_x F(x, y) + lam_k (grad_x f(x, y) - grad_x f(x, z))        (at the new y and z)

z starts at y0 (the first step), k counts the outer steps of an OuterLoop (``hypergrad`` alone: k = 0). Defaults:
the paper's deterministic schedule b = a = 1/3 with a constant z step (c = 0), so ``alpha_k lam_k`` stays at
``y_lr lam``: ``y_lr`` defaults to ``inner_lr / (1 + lam)``, which keeps the y-step below 1/L of ``F + lam f`` when
F is no stiffer than f. The paper's x step is ``xi alpha_k``; here x's step is the outer optimizer's (decay it
with a ``torch.optim.lr_scheduler`` on ``loop.optimizer`` to follow the paper exactly).

Cost per outer step: 2T + 2 gradients of f and T + 1 gradients of F; no Hessian-vector product; memory O(1) in T. Assumptions: f(x, .) strongly convex (lam_0 >= 2 L_F / mu_f makes F + lam f strongly
convex in y). Bias O(1/lam_k): the method approaches the bilevel solution as lam grows.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grad_y, value_and_grads

__all__ = ["step"]


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         y_lr: float, lam: float, lam_power: float, y_lr_power: float) -> Estimate:
    """One F2SA step from (x, y) (module docstring); ``carry = {"z": ..., "k": ...}``."""
    x, y = x.detach(), y.detach()
    z = y if carry is None else carry["z"].detach()
    k = 0 if carry is None else int(carry["k"])
    lam_k = lam * (k + 1) ** lam_power
    alpha = y_lr * (k + 1) ** (-y_lr_power)
    with torch.no_grad():
        g0 = None
        for _ in range(steps):
            gz = grad_y(problem.lower, x, z, False)
            gy = grad_y(problem.upper, x, y, False) + lam_k * grad_y(problem.lower, x, y, False)
            g0 = gz if g0 is None else g0
            z = problem.project(z - lr * gz)
            y = problem.project(y - alpha * gy)
    upper, gFx, _ = value_and_grads(problem.upper, x, y)
    check_finite(upper, "the upper objective")
    _, gfx, _ = value_and_grads(problem.lower, x, y)
    _, gzx, gzy = value_and_grads(problem.lower, x, z)
    dx = gFx + lam_k * (gfx - gzx)
    info = {"upper": upper, "f2sa_lambda": lam_k}
    if g0 is not None:
        info["lower_grad_norm_first"], info["lower_grad_norm_last"] = g0.norm(), gzy.norm()
    return Estimate(dx, None, y.detach(), info, {"z": z.detach(), "k": torch.tensor(k + 1)})
