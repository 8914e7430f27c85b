"""FSLA (Li, Gu, Huang, AAAI 2022): SOBA-like single loop with a look-ahead v step and STORM momentum on x.

One iteration, ``rho_t = inner_lr / sqrt(t)``, ``gamma_t = outer_lr / sqrt(t)``, ``eta_t = momentum / sqrt(t)``
(``momentum`` defaults to ``inner_lr``, as the benchmark ties it to the inner step)::

    y' = y;   y <- y - rho_t grad_y f_B1(x, y)
    v' = v;   v <- v - rho_t (H_B2(x, y) v - grad_y F_O1(x, y))         # at the new y
    g  = grad_x F_O2(x, y) - J_B3(x, y) v
    g' = grad_x F_O2(x', y') - J_B3(x', y') v'                           # the previous x, y and v
    d  <- g + (1 - eta_t)(d - g')     (d = g at t = 1);   x' = x;   x <- x - gamma_t d

Cost: 1 gradient, 1 HVP and 2 cross products on inner batches, 3 gradients of F on outer batches (counted 6 outer).
Memory: v, x', d.
"""
from __future__ import annotations

from ..base import Context, Solver, decay
from ..._validate import check_interval


def build(ctx: Context, inner_lr: float, outer_lr: float, *, momentum: float = None) -> Solver:
    o = ctx.oracles
    m = inner_lr if momentum is None else check_interval("momentum", momentum, 0.0, 1.0, open_low=True)
    if m > 1:
        raise ValueError(f"fsla's momentum defaults to inner_lr, which is {inner_lr} > 1; pass momentum in (0, 1]")

    def init(x, y):
        return {"x": x, "y": y, "v": y.new_zeros(y.shape), "x_prev": x, "d_x": x.new_zeros(x.shape)}

    def step(s, t):
        rho, gamma, eta = decay(inner_lr, 0.5, t), decay(outer_lr, 0.5, t), decay(m, 0.5, t)
        x, y_old, v_old, x_prev = s["x"], s["y"], s["v"], s["x_prev"]
        b1, _ = ctx.inner.draw()
        y = y_old - rho * o.grad_lower_y(x, y_old, b1)
        b2, _ = ctx.inner.draw()
        o1, _ = ctx.outer.draw()
        v = v_old - rho * (o.hvp(x, y, v_old, b2) - o.grads_upper(x, y, o1)[1])
        o2, _ = ctx.outer.draw()
        b3, _ = ctx.inner.draw()
        g = o.grads_upper(x, y, o2)[0] - o.cross(x, y, v, b3)
        if t == 1:
            d = g
        else:
            g_old = o.grads_upper(x_prev, y_old, o2)[0] - o.cross(x_prev, y_old, v_old, b3)
            d = g + (1 - eta) * (s["d_x"] - g_old)
        return {"x": x - gamma * d, "y": y, "v": v, "x_prev": x, "d_x": d}

    return Solver(init, step)
