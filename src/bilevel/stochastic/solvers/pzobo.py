"""PZOBO (Sow, Ji, Liang, 2022): a zeroth-order estimate of the Jacobian of the inner solution map (full batch).

One iteration, with Q = ``n_gaussian_vectors`` Gaussian directions ``u_q ~ N(0, I)`` in x's space::

    y_new = GD^N(y, x)                                  # N = n_inner_steps full-batch steps, lr inner_lr
    delta_q = (GD^N(y, x + mu u_q) - y_new) / mu        # from the same start y
    g_hat = (1/Q) sum_q u_q <delta_q, grad_y F(x, y_new)>
    x <- x - outer_lr (grad_x F(x, y_new) + g_hat);   y <- y_new

``g_hat`` estimates ``(dy_N/dx)^T grad_y F`` by forward differences; no second derivatives. It is biased (smoothing
radius mu, finite N), so PZOBO reaches an approximate stationary point. Cost: ``(1 + Q) N`` full-batch gradients of
f and one of F per iteration. Memory: Q perturbed inner solutions at a time.
"""
from __future__ import annotations

import torch

from ..base import Context, Solver, gd_inner
from ..._validate import check_float, check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, n_gaussian_vectors: int = 10,
          mu: float = 0.1) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="pzobo")
    q = check_int("n_gaussian_vectors", n_gaussian_vectors, 1, who="pzobo")
    mu = check_float("mu", mu, positive=True)

    def init(x, y):
        return {"x": x, "y": y}

    def step(s, t):
        x, y0 = s["x"], s["y"]
        y = gd_inner(ctx, x, y0, inner_lr, n)
        u = torch.randn(q, x.numel(), generator=ctx.noise, dtype=torch.float64).to(x)
        fx, fy = o.grads_upper(x, y, None)
        g_hat = torch.zeros_like(x)
        for k in range(q):
            delta = (gd_inner(ctx, x + mu * u[k], y0, inner_lr, n) - y) / mu
            g_hat = g_hat + u[k] * torch.dot(delta, fy)
        return {"x": x - outer_lr * (fx + g_hat / q), "y": y}

    return Solver(init, step)
