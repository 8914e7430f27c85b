"""SOBA (Dagreou, Ablin, Vaiter, Moreau, NeurIPS 2022): one step on y, v and x per iteration, from one batch each.

With an inner batch B and an outer batch O, all at the current ``(x_t, y_t, v_t)``::

    y_{t+1} = y_t - rho_t grad_y f_B
    v_{t+1} = v_t - rho_t (H_B v_t - grad_y F_O)          # SGD on 1/2 v'Hv - v' grad_y F
    x_{t+1} = x_t - gamma_t (grad_x F_O - J_B v_t)

with ``rho_t = inner_lr / sqrt(t)`` and ``gamma_t = outer_lr / sqrt(t)``. Cost per iteration: one fused VJP on B
(gradient, HVP and cross product: 3 inner oracle calls per sample) and one gradient of F on O (2 outer). Memory:
``v`` (dim y).
"""
from __future__ import annotations

from ..base import Context, Solver, decay


def build(ctx: Context, inner_lr: float, outer_lr: float, *, decay_exponent: float = 0.5) -> Solver:
    o = ctx.oracles

    def init(x, y):
        return {"x": x, "y": y, "v": y.new_zeros(y.shape)}

    def step(s, t):
        rho, gamma = decay(inner_lr, decay_exponent, t), decay(outer_lr, decay_exponent, t)
        x, y, v = s["x"], s["y"], s["v"]
        b, _ = ctx.inner.draw()
        g, hv, jv = o.lower_vjp(x, y, v, b)
        ob, _ = ctx.outer.draw()
        fx, fy = o.grads_upper(x, y, ob)
        return {"x": x - gamma * (fx - jv), "y": y - rho * g, "v": v - rho * (hv - fy)}

    return Solver(init, step)
