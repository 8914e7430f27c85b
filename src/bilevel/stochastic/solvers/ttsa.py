"""TTSA (Hong, Wai, Wang, Yang, SIAM J. Optim. 2023): two timescales, one SGD step on y per outer step.

One iteration, ``rho_t = inner_lr / t^0.4``, ``gamma_t = outer_lr / t^0.6``, ``eta = neumann_lr``::

    y <- y - rho_t grad_y f_B(x, y)                               # inner batch B
    r, g_x = grad_y F_O(x, y), grad_x F_O(x, y)                   # at the new y
    v = Q eta prod_{j=1}^{p} (I - eta H_{B_j}) r,   p ~ U{0..Q-1}
    x <- x - gamma_t (g_x - J_B v)                                 # the same batch B, at the new y

Cost: ``p + 2`` inner oracle calls per sample and 2 outer. Memory: none.
"""
from __future__ import annotations

from ..base import Context, Solver, decay, neumann_options, random_neumann


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_neumann_steps: int = 10,
          neumann_lr: float = None) -> Solver:
    o = ctx.oracles
    q, eta = neumann_options("ttsa", n_neumann_steps, neumann_lr, inner_lr, 1)

    def init(x, y):
        return {"x": x, "y": y}

    def step(s, t):
        x = s["x"]
        b, _ = ctx.inner.draw()
        y = s["y"] - decay(inner_lr, 0.4, t) * o.grad_lower_y(x, s["y"], b)
        ob, _ = ctx.outer.draw()
        fx, r = o.grads_upper(x, y, ob)
        v = random_neumann(ctx, x, y, r, eta, q)
        return {"x": x - decay(outer_lr, 0.6, t) * (fx - o.cross(x, y, v, b)), "y": y}

    return Solver(init, step)
