"""VRBO (Yang, Ji, Liang, NeurIPS 2021): SPIDER estimates of grad_y f and of the hypergradient, with an inner loop.

Outer iteration t (``period = max(1, int((n_lower + n_upper) * period_frac / batch_size))``)::

    if (t - 1) % period == 0:                                     # full-batch refresh at (x, y)
        d_y = grad_y f;  d_x = grad_x F - J v,  v = full-batch Neumann series for H v = grad_y F;  y' = y
    x <- x - outer_lr d_x
    repeat n_inner_steps times (x fixed):
        d_y += grad_y f_B(x, y) - grad_y f_B(x, y')
        v, v' = Neumann series at (x, y) and (x, y') on the same Q fresh batches
        d_x += (grad_x F_O - J_B v)(x, y) - (grad_x F_O - J_B v')(x, y')
        y' <- y;  y <- y - inner_lr d_y

Constant steps; ``eta = neumann_lr``. Cost per outer iteration: ``n_inner_steps (4 + 2Q)`` inner oracle calls per
sample and ``4 n_inner_steps`` outer, plus the refresh. Memory: y' and two directions.
"""
from __future__ import annotations

from ..base import Context, Solver, neumann_options, neumann_full, neumann_pair
from ..._validate import check_float, check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, n_neumann_steps: int = 10,
          neumann_lr: float = None, period_frac: float = 0.5) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="vrbo")
    q, eta = neumann_options("vrbo", n_neumann_steps, neumann_lr, inner_lr, 0)
    period = max(1, int((ctx.n_lower + ctx.n_upper) * check_float("period_frac", period_frac, positive=True)
                        / ctx.batch_size))

    def init(x, y):
        return {"x": x, "y": y, "y_old": y, "d_x": x.new_zeros(x.shape), "d_y": y.new_zeros(y.shape)}

    def step(s, t):
        x, y, y_old, d_x, d_y = s["x"], s["y"], s["y_old"], s["d_x"], s["d_y"]
        if (t - 1) % period == 0:
            d_y = o.grad_lower_y(x, y, None)
            fx, r = o.grads_upper(x, y, None)
            d_x = fx - o.cross(x, y, neumann_full(ctx, x, y, r, eta, q), None)
            y_old = y
        x = x - outer_lr * d_x
        for _ in range(n):
            b, _ = ctx.inner.draw()
            d_y = d_y + o.grad_lower_y(x, y, b) - o.grad_lower_y(x, y_old, b)
            ob, _ = ctx.outer.draw()
            fx, r = o.grads_upper(x, y, ob)
            fx0, r0 = o.grads_upper(x, y_old, ob)
            v, v0 = neumann_pair(ctx, (x, y, r), (x, y_old, r0), eta, q)
            d_x = d_x + (fx - o.cross(x, y, v, b)) - (fx0 - o.cross(x, y_old, v0, b))
            y_old, y = y, y - inner_lr * d_y
        return {"x": x, "y": y, "y_old": y_old, "d_x": d_x, "d_y": d_y}

    return Solver(init, step)
