"""BOME (Liu, Ye, Wright, Stone, Liu, NeurIPS 2022): value-function penalty with a dynamic barrier (full batch).

One iteration, with ``q(x, y) = f(x, y) - f(x, y_hat)``, ``y_hat = GD^N(y, x)`` (N = ``n_inner_steps`` full-batch
steps, lr inner_lr, from the current y)::

    grad q = (grad_x f(x, y) - grad_x f(x, y_hat),  grad_y f(x, y))
    phi    = eta ||grad q||^2   (phi="grad_norm")   or   eta q(x, y)   (phi="value")
    lam    = max(phi - <grad F, grad q>, 0) / ||grad q||^2          (0 when grad q = 0)
    y <- y - inner_lr (grad_y F + lam grad_y q);   x <- x - outer_lr (grad_x F + lam grad_x q)

BOME is a first-order method for the value-function reformulation: it reaches approximate stationary points (see its
docs page for the error it reaches). Cost: ``N + 2`` full-batch gradients of f and one of F. Memory: none.
"""
from __future__ import annotations

import torch

from ..base import Context, Solver, gd_inner
from ..._validate import check_float, check_int


def build(ctx: Context, inner_lr: float, outer_lr: float, *, n_inner_steps: int = 10, eta: float = 0.5,
          phi: str = "grad_norm") -> Solver:
    o = ctx.oracles
    n = check_int("n_inner_steps", n_inner_steps, 1, who="bome")
    eta = check_float("eta", eta, positive=True)
    if phi not in ("grad_norm", "value"):
        raise ValueError(f"bome's phi must be 'grad_norm' or 'value', got {phi!r}")

    def init(x, y):
        return {"x": x, "y": y}

    def step(s, t):
        x, y = s["x"], s["y"]
        y_hat = gd_inner(ctx, x, y, inner_lr, n)
        fx, fy = o.grads_upper(x, y, None)
        gx, gy = o.grads_lower(x, y, None)
        qx = gx - o.grads_lower(x, y_hat, None)[0]
        norm2 = torch.dot(qx, qx) + torch.dot(gy, gy)
        if phi == "grad_norm":
            target = eta * norm2
        else:
            target = eta * (o.value_lower(x, y, None) - o.value_lower(x, y_hat, None))
        inner = torch.dot(fx, qx) + torch.dot(fy, gy)
        lam = torch.where(norm2 > 0, torch.clamp(target - inner, min=0) / torch.where(norm2 > 0, norm2, 1), 0)
        return {"x": x - outer_lr * (fx + lam * qx), "y": y - inner_lr * (fy + lam * gy)}

    return Solver(init, step)
