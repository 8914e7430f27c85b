"""BSA (Ghadimi & Wang, 2018): the outer step first, with a randomised Neumann estimate, then SGD on y.

One iteration, ``rho_t = inner_lr / sqrt(t)``, ``gamma_t = outer_lr / sqrt(t)``, ``eta = neumann_lr``::

    r, g_x = grad_y F_O(x, y), grad_x F_O(x, y)
    v = Q eta prod_{j=1}^{p} (I - eta H_{B_j}) r,   p ~ U{0, ..., Q-1}       # Q = n_neumann_steps
    x <- x - gamma_t (g_x - J_B' v)
    y <- n_inner_steps SGD steps on f at the new x (lr rho_t)

``v`` is an unbiased estimate of the series ``eta sum_{k<Q} (I - eta H)^k r``. Cost: ``n_inner_steps + p + 1``
inner oracle calls per sample (p averages (Q-1)/2) and 2 outer. Memory: none.
"""
from __future__ import annotations

from ..base import Context, Solver, decay, neumann_options, random_neumann, sgd_inner
from ..._validate import check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, n_neumann_steps: int = 10,
          neumann_lr: float = None) -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="bsa")
    q, eta = neumann_options("bsa", n_neumann_steps, neumann_lr, inner_lr, 1)

    def init(x, y):
        return {"x": x, "y": y}

    def step(s, t):
        x, y = s["x"], s["y"]
        ob, _ = ctx.outer.draw()
        fx, r = o.grads_upper(x, y, ob)
        v = random_neumann(ctx, x, y, r, eta, q)
        b, _ = ctx.inner.draw()
        x = x - decay(outer_lr, 0.5, t) * (fx - o.cross(x, y, v, b))
        return {"x": x, "y": sgd_inner(ctx, x, y, decay(inner_lr, 0.5, t), n)}

    return Solver(init, step)
