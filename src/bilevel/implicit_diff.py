"""Implicit differentiation of any inner solver: the primitive :func:`root_vjp` and the :func:`custom_root` decorator.

Given an optimality condition T(x, y) = 0 that the solver's output satisfies (for a minimizer of f(x, .),
T = grad_y f), the decorated solver becomes differentiable in x without differentiating its iterations:

    dy/dx^T u = -(dT/dx)^T v,     (dT/dy)^T v = u,

with v from a swappable linear solver ``solve(matvec, b) -> (v, info)`` (default: conjugate gradient,
which needs dT/dy symmetric positive definite, as for T = grad_y f with f strongly convex). Cost of the
backward pass: one taped evaluation of T, one vector-Jacobian product per solver iteration and one more
for dT/dx; the forward pass is whatever the solver costs, with no tape.

Example::

    def optimality(lam, w):                      # ridge regression: grad_w of 1/2||Xw - t||^2 + lam/2||w||^2
        return X.T @ (X @ w - t) + lam * w

    @bilevel.implicit_diff.custom_root(optimality)
    def ridge(lam):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(d), X.T @ t)

    lam = torch.tensor(0.5, requires_grad=True)
    val_loss(ridge(lam)).backward()              # lam.grad by the implicit function theorem
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch

from . import linear_solve
from ._tree import Tree, flatten
from .problem import grads_or_zeros

#: ``solve(matvec, b) -> (v, info)``: a linear solver of :mod:`bilevel.linear_solve` or your own
Solver = Callable[..., Tuple[torch.Tensor, dict]]


def root_vjp(optimality: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, cotangent: torch.Tensor, solve: Solver) -> Tuple[torch.Tensor, dict]:
    """Vector-Jacobian product of the implicit map x -> y(x) defined by ``optimality(x, y(x)) = 0``.

    Returns ``-(dT/dx)^T v`` with ``(dT/dy)^T v = cotangent``, i.e. ``cotangent^T dy/dx``, and the
    solver's info. Assumes dT/dy symmetric (true for T = grad_y f), so ``matvec`` is a vector-Jacobian
    product of T in y.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = y.detach().requires_grad_()
        t = optimality(x, y)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            (hv,) = grads_or_zeros(t, (y,), grad_outputs=v, retain_graph=True)
            return hv

        v, info = solve(matvec, cotangent)
        (cross,) = grads_or_zeros(t, (x,), grad_outputs=v)
    return -cross, info


class _Root(torch.autograd.Function):
    @staticmethod
    def forward(ctx, solver, optimality, solve, x_spec, holder, x_flat):
        with torch.no_grad():
            y = solver(x_spec.unflatten(x_flat.detach()))
        y_flat, y_spec = flatten(y, "the solver's output")
        holder["y_spec"] = y_spec
        ctx.optimality, ctx.solve, ctx.x_spec, ctx.y_spec = optimality, solve, x_spec, y_spec
        ctx.save_for_backward(x_flat.detach(), y_flat)
        return y_flat.clone()

    @staticmethod
    def backward(ctx, grad_y):
        x, y = ctx.saved_tensors
        xs, ys = ctx.x_spec, ctx.y_spec

        def flat_optimality(xf, yf):
            out = ctx.optimality(xs.unflatten(xf), ys.unflatten(yf))
            return out.reshape(-1) if isinstance(out, torch.Tensor) else flatten(out, "T(x, y)", detach=False)[0]

        gx, _ = root_vjp(flat_optimality, x, y, grad_y.contiguous(), ctx.solve)
        return None, None, None, None, None, gx


def custom_root(optimality: Callable[[Tree, Tree], Tree],
                solve: Optional[Callable[..., tuple]] = None) -> Callable[[Callable[[Tree], Tree]], Callable]:
    """Decorator making ``solver(x) -> y`` differentiable through ``optimality(x, y) = 0``.

    Parameters
    ----------
    optimality : callable
        ``T(x, y)`` with the structure of y (tensor or dict), zero at the solver's output.
    solve : callable, optional
        ``solve(matvec, b) -> (v, info)``; default :func:`bilevel.linear_solve.cg` with 100 iterations.

    Returns
    -------
    callable
        A decorator; the decorated function takes x (tensor or dict of tensors, may require grad) and
        returns y with the solver's structure.
    """
    lin = solve if solve is not None else functools.partial(linear_solve.cg, steps=100)

    def decorator(solver: Callable[[Tree], Tree]) -> Callable[[Tree], Tree]:
        @functools.wraps(solver)
        def wrapped(x: Tree) -> Tree:
            x_flat, x_spec = flatten(x, "x", detach=False)  # keeps the caller's tape
            holder: dict = {}
            y_flat = _Root.apply(solver, optimality, lin, x_spec, holder, x_flat)
            return holder["y_spec"].unflatten(y_flat)

        return wrapped

    return decorator
