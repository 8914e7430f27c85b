"""BAMM, the averaged method of multipliers (Liu et al., ICML 2023), single-loop form.

The follower minimizes the average ``phi_mu = mu F + (1 - mu) f`` with ``mu_k = mu0 (k + 1)^(-1/p)`` shrinking to 0
(the optimistic selection among f's minimizers when f is merely convex), and a multiplier z tracks
``(grad^2_yy phi_mu)^-1 grad_y F``. Outer step k, all quantities at the old (x_k, y_k, z_k) (Jacobi):

    res.grad = grad_x F(x_k, y_k) - grad^2_xy phi_mu(x_k, y_k) z_k
    y_{k+1}  = P(y_k - s grad_y phi_mu(x_k, y_k))                      (``inner_steps`` times at x_k; s = inner_lr)
    r_k = grad^2_yy phi_mu(x_k, y_k) z_k - grad_y F(x_k, y_k)
    z_{k+1}  = z_k - eta_k r_k,    eta_k = ``z_lr`` (default inner_lr), or ||r||^2 / r' H r (``line_search``)

z_0 = 0 (so the first direction is grad_x F), y and z and k carried. The x-direction uses the old z_k, as in the
authors' code; the x step is the outer optimizer's.

Cost per outer step: ``inner_steps`` gradients of phi, one gradient of F, and one Hessian-vector product of phi
(two with ``line_search``) for the mixed and yy products: BAMM is first order in the sense of single-loop, but it
does take Hessian-vector products. Assumptions: f convex in y (not necessarily strongly); with mu -> 0 slowly
(p large) and decaying steps the iterates approach the optimistic bilevel solution. ``p = inf`` (``mu0 = 0``) is
the strongly convex case: a single-loop implicit method.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..estimators.base import Estimate, check_finite
from ..problem import Problem, grads_or_zeros

__all__ = ["step"]


def step(problem: Problem, x: torch.Tensor, y: torch.Tensor, steps: int, carry: Optional[dict], *, lr: float,
         z_lr: float, mu0: float, p: float, line_search: bool) -> Estimate:
    """One BAMM step at (x, y) (module docstring); ``carry = {"z": ..., "k": ...}``."""
    x, y = x.detach(), y.detach()
    z = torch.zeros_like(y) if carry is None else carry["z"].detach()
    k = 0 if carry is None else int(carry["k"])
    mu = mu0 * (k + 1) ** (-1.0 / p) if math.isfinite(p) else mu0

    def phi(xx, yy):
        return mu * problem.upper(xx, yy) + (1.0 - mu) * problem.lower(xx, yy)

    with torch.enable_grad():
        xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
        upper = problem.upper(xl, yl)
        gFx, gFy = grads_or_zeros(upper, (xl, yl))
        (gphi,) = torch.autograd.grad(phi(xl, yl), yl, create_graph=True)
        # grad^2_xy phi z and grad^2_yy phi z (the graph kept for the line search's second product)
        mixed, hz = grads_or_zeros(gphi, (xl, yl), grad_outputs=z, retain_graph=line_search)
        r = hz - gFy
        if line_search:
            (hr,) = grads_or_zeros(gphi, (yl,), grad_outputs=r.detach())
            curv = float(r @ hr)
            eta = float(r @ r) / curv if curv > 0 else 0.0
        else:
            eta = z_lr
    check_finite(upper.detach(), "the upper objective")
    dx = gFx - mixed
    y_new = y
    for _ in range(steps):
        with torch.enable_grad():
            yl = y_new.clone().requires_grad_()
            (g,) = torch.autograd.grad(phi(x, yl), yl)
        y_new = problem.project(y_new - lr * g)
    z_new = z - eta * r.detach()
    info = {"upper": upper.detach(), "bamm_mu": mu, "bamm_eta": eta}
    return Estimate(dx.detach(), None, y_new.detach(), info, {"z": z_new.detach(), "k": torch.tensor(k + 1)})
