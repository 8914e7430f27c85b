"""SRBA (Dagreou, Moreau, Vaiter, Ablin, AISTATS 2024): SOBA's directions with SARAH/SPIDER recursions.

Every ``period = max(1, int((n_lower + n_upper) * period_frac / batch_size))`` iterations (from the first), the
directions are recomputed on the full batch at ``(x, y, v)``::

    d_y = grad_y f,   d_v = H v - grad_y F,   d_x = grad_x F - J v

and otherwise corrected with one inner batch B and one outer batch O, evaluated at the current point and at the
previous one ``(x', y', v')``::

    d_y += grad_y f_B - grad_y f_B'      d_v += (H_B v - H_B' v') - (grad_y F_O - grad_y F_O')
    d_x += (grad_x F_O - grad_x F_O') - (J_B v - J_B' v')

then ``(x', y', v') <- (x, y, v)`` and ``y -= rho d_y``, ``v -= rho d_v``, ``x -= gamma d_x`` with constant steps.
Cost: 6 inner and 4 outer oracle calls per sample, plus a full-batch refresh (3 n_lower + 2 n_upper) every period.
Memory: the previous point and the three directions (no per-sample memory; ``max_memory_mb`` bounds them too).
"""
from __future__ import annotations

from ..base import Context, Solver, check_memory


def build(ctx: Context, inner_lr: float, outer_lr: float, *, period_frac: float = 0.5,
          max_memory_mb: float = 1024.0) -> Solver:
    o = ctx.oracles
    period = max(1, int((ctx.n_lower + ctx.n_upper) * period_frac / ctx.batch_size))

    def init(x, y):
        check_memory("srba", (4 * y.numel() + 2 * x.numel()) * y.element_size(), max_memory_mb)
        v = y.new_zeros(y.shape)
        return {"x": x, "y": y, "v": v, "x_old": x, "y_old": y, "v_old": v,
                "d_x": x.new_zeros(x.shape), "d_y": y.new_zeros(y.shape), "d_v": y.new_zeros(y.shape)}

    def step(s, t):
        x, y, v = s["x"], s["y"], s["v"]
        if (t - 1) % period == 0:
            g, hv, jv = o.lower_vjp(x, y, v, None)
            fx, fy = o.grads_upper(x, y, None)
            d_y, d_v, d_x = g, hv - fy, fx - jv
        else:
            xo, yo, vo = s["x_old"], s["y_old"], s["v_old"]
            b, _ = ctx.inner.draw()
            ob, _ = ctx.outer.draw()
            g, hv, jv = o.lower_vjp(x, y, v, b)
            g0, hv0, jv0 = o.lower_vjp(xo, yo, vo, b)
            fx, fy = o.grads_upper(x, y, ob)
            fx0, fy0 = o.grads_upper(xo, yo, ob)
            d_y = s["d_y"] + (g - g0)
            d_v = s["d_v"] + (hv - hv0) - (fy - fy0)
            d_x = s["d_x"] + (fx - fx0) - (jv - jv0)
        return {"x": x - outer_lr * d_x, "y": y - inner_lr * d_y, "v": v - inner_lr * d_v,
                "x_old": x, "y_old": y, "v_old": v, "d_x": d_x, "d_y": d_y, "d_v": d_v}

    return Solver(init, step)
