"""MRBO (Yang, Ji, Liang, NeurIPS 2021): STORM momentum on y and x, Neumann series on shared batches.

One iteration, ``rho_t = inner_lr / t^(1/3)``, ``gamma_t = outer_lr / t^(1/3)``, ``beta_t = momentum / t^(2/3)``,
``eta = neumann_lr``, at the current point ``(x, y)`` and the previous one ``(x', y')``::

    g_y = grad_y f_B(x, y);  d_y <- g_y + (1 - beta_t)(d_y - grad_y f_B(x', y'))     (d_y = g_y at t = 1)
    r, g = grad F_O(x, y);   r', g' = grad F_O(x', y')
    v, v' = Neumann series for H(x, y) v = r and H(x', y') v' = r' on the same Q fresh batches
    d_x <- (g - J_B v) + (1 - beta_t)(d_x - (g' - J_B(x', y') v'))                    (d_x = g - J_B v at t = 1)
    (x', y') <- (x, y);  y <- y - rho_t d_y;  x <- x - gamma_t d_x

Cost: ``2 + 2Q + 2`` inner oracle calls per sample and 4 outer. Memory: the previous point and two directions.
"""
from __future__ import annotations

from ..base import Context, Solver, decay, neumann, neumann_options, neumann_pair
from ..._validate import check_interval


def momentum_build(name: str, pair, single):
    def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_neumann_steps: int = 10, neumann_lr: float = None,
              momentum: float = 0.5) -> Solver:
        o = ctx.oracles
        q, eta = neumann_options(name, n_neumann_steps, neumann_lr, inner_lr, 1 if name == "sustain" else 0)
        c = check_interval("momentum", momentum, 0.0, 1.0, open_low=True)

        def init(x, y):
            return {"x": x, "y": y, "x_prev": x, "y_prev": y, "d_x": x.new_zeros(x.shape), "d_y": y.new_zeros(y.shape)}

        def step(s, t):
            beta = decay(c, 2 / 3, t)
            x, y, xp, yp = s["x"], s["y"], s["x_prev"], s["y_prev"]
            b, _ = ctx.inner.draw()
            g_y = o.grad_lower_y(x, y, b)
            ob, _ = ctx.outer.draw()
            fx, r = o.grads_upper(x, y, ob)
            if t == 1:
                v = single(ctx, x, y, r, eta, q)
                d_y, d_x = g_y, fx - o.cross(x, y, v, b)
            else:
                d_y = g_y + (1 - beta) * (s["d_y"] - o.grad_lower_y(xp, yp, b))
                fx0, r0 = o.grads_upper(xp, yp, ob)
                v, v0 = pair(ctx, (x, y, r), (xp, yp, r0), eta, q)
                g_x, g_x0 = fx - o.cross(x, y, v, b), fx0 - o.cross(xp, yp, v0, b)
                d_x = g_x + (1 - beta) * (s["d_x"] - g_x0)
            return {"x": x - decay(outer_lr, 1 / 3, t) * d_x, "y": y - decay(inner_lr, 1 / 3, t) * d_y,
                    "x_prev": x, "y_prev": y, "d_x": d_x, "d_y": d_y}

        return Solver(init, step)

    return build


build = momentum_build("mrbo", neumann_pair, neumann)
