"""F2SA (Kwon, Kwon, Wright, Nowak, ICML 2023): a fully first-order penalty method with a growing multiplier.

State ``(x, y, z, lam)``: y minimizes ``F + lam f`` and z minimizes f. One iteration, with ``alpha_t = inner_lr /
t^(5/7)``, ``beta_t = inner_lr / t^(4/7)``, ``gamma_t = outer_lr / t^(4/7)``, ``delta_t = lam_growth / t^(1/7)``::

    repeat n_inner_steps times (inner batch B, outer batch O):
        y <- y - alpha_t (lam grad_y f_B(x, y) + grad_y F_O(x, y))
        z <- z - beta_t grad_y f_B(x, z)
    d_x = grad_x F_O'(x, y) + lam (grad_x f_B'(x, y) - grad_x f_B'(x, z))      # one batch B' for both terms
    x <- x - gamma_t d_x;   lam <- lam + delta_t      (lam grows like t^(6/7))

For a fixed lam the direction is the gradient of ``F(x, y_lam) + lam (f(x, y_lam) - f(x, z))`` at the exact y and z,
which tends to the hypergradient as lam grows. Cost: ``2 n_inner_steps + 2`` inner gradients per sample and
``2 n_inner_steps + 2`` outer (no second derivatives). Memory: z.
"""
from __future__ import annotations

from ..base import Context, Solver, decay
from ..._validate import check_float, check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, lam0: float = 1.0,
          lam_growth: float = 0.1) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 0, who="f2sa")
    lam0 = check_float("lam0", lam0, positive=True)
    growth = check_float("lam_growth", lam_growth, nonnegative=True)

    def init(x, y):
        return {"x": x, "y": y, "z": y, "lam": x.new_tensor(lam0)}

    def step(s, t):
        x, y, z, lam = s["x"], s["y"], s["z"], s["lam"]
        alpha, beta = decay(inner_lr, 5 / 7, t), decay(inner_lr, 4 / 7, t)
        for _ in range(n):
            b, _ = ctx.inner.draw()
            ob, _ = ctx.outer.draw()
            y_next = y - alpha * (lam * o.grad_lower_y(x, y, b) + o.grads_upper(x, y, ob)[1])
            z = z - beta * o.grad_lower_y(x, z, b)
            y = y_next
        b, _ = ctx.inner.draw()
        ob, _ = ctx.outer.draw()
        d_x = o.grads_upper(x, y, ob)[0] + lam * (o.grads_lower(x, y, b)[0] - o.grads_lower(x, z, b)[0])
        return {"x": x - decay(outer_lr, 4 / 7, t) * d_x, "y": y, "z": z, "lam": lam + decay(growth, 1 / 7, t)}

    return Solver(init, step)
