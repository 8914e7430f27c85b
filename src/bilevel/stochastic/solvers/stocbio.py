"""stocBiO (Ji, Yang, Liang, ICML 2021): warm-started SGD on y, a stochastic Neumann series for the linear system.

One iteration, with constant steps::

    y <- n_inner_steps SGD steps on f (lr inner_lr, a fresh batch each)
    r, g_x = grad_y F_O(x, y), grad_x F_O(x, y)
    v = eta sum_{k=0}^{Q} prod_{j=1}^{k} (I - eta H_{B_j}) r     # Q = n_neumann_steps fresh batches, eta = neumann_lr
    x <- x - outer_lr (g_x - J_B' v)

``neumann_lr`` defaults to ``inner_lr``; the series' bias is ``(I - eta H)^{Q+1} H^{-1} r``. Cost:
``n_inner_steps + Q + 1`` inner oracle calls per sample and 2 outer. Memory: none beyond x and y.
"""
from __future__ import annotations

from ..base import Context, Solver, neumann, neumann_options, sgd_inner
from ..._validate import check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, n_neumann_steps: int = 10,
          neumann_lr: float = None) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="stocbio")
    q, eta = neumann_options("stocbio", n_neumann_steps, neumann_lr, inner_lr, 0)

    def init(x, y):
        return {"x": x, "y": y}

    def step(s, t):
        x = s["x"]
        y = sgd_inner(ctx, x, s["y"], inner_lr, n)
        ob, _ = ctx.outer.draw()
        fx, r = o.grads_upper(x, y, ob)
        v = neumann(ctx, x, y, r, eta, q)
        b, _ = ctx.inner.draw()
        return {"x": x - outer_lr * (fx - o.cross(x, y, v, b)), "y": y}

    return Solver(init, step)
