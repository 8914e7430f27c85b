"""AmIGO (Arbel & Mairal, ICLR 2022): warm-started SGD on y, then warm-started SGD on the linear system.

One iteration, with constant steps::

    y <- n_inner_steps SGD steps on f from the current y (lr inner_lr, a fresh batch each)
    r, g_x = grad_y F_O(x, y), grad_x F_O(x, y)                 # one outer batch O
    v <- n_inner_steps steps of v - inner_lr (H_B v - r)         # warm-started, a fresh batch each
    x <- x - outer_lr (g_x - J_B' v)                              # a fresh inner batch B'

Cost: ``2 n_inner_steps + 1`` inner oracle calls per sample (21 at the default) and 2 outer. Memory: ``v``.
"""
from __future__ import annotations

from ..base import Context, Solver, sgd_inner
from ..._validate import check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="amigo")

    def init(x, y):
        return {"x": x, "y": y, "v": y.new_zeros(y.shape)}

    def step(s, t):
        x, v = s["x"], s["v"]
        y = sgd_inner(ctx, x, s["y"], inner_lr, n)
        ob, _ = ctx.outer.draw()
        fx, r = o.grads_upper(x, y, ob)
        for _ in range(n):
            b, _ = ctx.inner.draw()
            v = v - inner_lr * (o.hvp(x, y, v, b) - r)
        b, _ = ctx.inner.draw()
        return {"x": x - outer_lr * (fx - o.cross(x, y, v, b)), "y": y, "v": v}

    return Solver(init, step)
