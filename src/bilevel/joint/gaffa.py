"""BiC-GAFFA (the ``gaffo`` method; arXiv 2406.01992): a first-order method for bilevel problems whose lower level
may carry constraints ``g(x, y) <= 0``, through a doubly regularized gap function.

With ``L(x, y, z) = f(x, y) + z' g(x, y)`` and proximal parameters gamma1 (for y) and gamma2 (for the multiplier),
the gap ``G(x, y, z) = max_{theta, lam >= 0} L(x, y, lam) - L(x, theta, z) - ||theta - y||^2 / (2 gamma1)
- ||lam - z||^2 / (2 gamma2)`` is penalized as ``F / c_k + G``, ``c_k = c (k + 1)^p``. Outer step k, everything at
the old (x_k, y_k, z_k) (Jacobi), eta = ``inner_lr``:

    theta <- P(theta - eta (grad_y f(x, theta) + grad_y g(x, theta)' z + (theta - y) / gamma1))  (``inner_steps``)
    lam    = max(z + gamma2 g(x, y), 0)
    res.grad = grad_x F(x, y) / c_k + grad_x f(x, y) + grad_x g(x, y)' lam - grad_x f(x, theta) - grad_x g(x, theta)' z
    y_{k+1} = P(y - alpha (grad_y F / c_k + grad_y f(x, y) + grad_y g(x, y)' lam - (y - theta) / gamma1))
    z_{k+1} = clip(z - beta (-g(x, theta) - (z - lam) / gamma2), 0, r)

alpha = ``y_lr`` (default ``inner_lr``), beta = ``z_lr`` (default ``inner_lr``); theta_0 = y_0, z_0 = 0, and theta,
z, k carried. Without ``ll_constraint`` (g = 0) z and lam vanish and this is MEHA's iteration in Jacobi order.

Cost per outer step: ``inner_steps`` + 2 gradients of f (and of g), one gradient of F; no Hessian-vector product.
Assumptions: f and g convex in y; p in (0, 1/2); r at least the size of the optimal multiplier. The bias of a fixed
penalty c is O(1/c).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grads_or_zeros

__all__ = ["step"]


def _constraint(problem: Problem, g: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = g(problem.x_spec.unflatten(x), problem.y_spec.unflatten(y))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"ll_constraint must return a tensor g(x, y) (<= 0 where feasible), got {type(out).__name__}")
    return out.reshape(-1)


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         y_lr: float, z_lr: float, gamma1: float, gamma2: float, c: float, p: float, r: float,
         ll_constraint: Optional[Callable]) -> Estimate:
    """One BiC-GAFFA step at (x, y) (module docstring); ``carry = {"theta", "z", "k"}``."""
    x, y = x.detach(), y.detach()
    if ll_constraint is None:
        def gval(xx, yy):
            return torch.zeros(0, dtype=yy.dtype, device=yy.device)
    else:
        def gval(xx, yy):
            return _constraint(problem, ll_constraint, xx, yy)
    if carry is None:
        theta, k = y, 0
        z = torch.zeros_like(gval(x, y).detach())
    else:
        theta, z, k = carry["theta"].detach(), carry["z"].detach(), int(carry["k"])
    c_k = c * (k + 1) ** p
    for _ in range(steps):
        with torch.enable_grad():
            tl = theta.clone().requires_grad_()
            (gt,) = torch.autograd.grad(problem.lower(x, tl) + (z * gval(x, tl)).sum(), tl)
        theta = problem.project(theta - lr * (gt + (theta - y) / gamma1)).detach()
    with torch.enable_grad():
        xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
        upper = problem.upper(xl, yl)
        g_y = gval(xl, yl)
        lam = torch.clamp(z + gamma2 * g_y.detach(), min=0.0)
        at_y = upper / c_k + problem.lower(xl, yl) + (lam * g_y).sum()
        dx_y, dy = grads_or_zeros(at_y, (xl, yl))
        xt = x.clone().requires_grad_()
        g_theta = gval(xt, theta)
        (dx_t,) = grads_or_zeros(problem.lower(xt, theta) + (z * g_theta).sum(), (xt,))
    check_finite(upper.detach(), "the upper objective")
    y_new = problem.project(y - y_lr * (dy - (y - theta) / gamma1))
    z_new = torch.clamp(z - z_lr * (-g_theta.detach() - (z - lam) / gamma2), min=0.0, max=r)
    info = {"upper": upper.detach(), "gaffa_c": c_k}
    return Estimate((dx_y - dx_t).detach(), None, y_new.detach(), info,
                    {"theta": theta, "z": z_new.detach(), "k": torch.tensor(k + 1)})
