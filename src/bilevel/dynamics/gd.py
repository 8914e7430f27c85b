"""Gradient descent on the lower level, optionally projected or proximal.

``y_{k+1} = P( prox_{s g}( y_k - s * grad_y f(x, y_k) ) )``, s = ``lr``; ``prox`` is the proximal map of a
nonsmooth term g (``prox(v, s)``), P the projection onto the lower-level constraint set. Without them this
is the plain unroll of RHG/FHG/T-RHG and the warm-up of the implicit methods.

Cost per step: one evaluation of f and one backward pass (a Hessian-vector product's worth more when the
step is differentiated in reverse mode).

``compile_step=True`` runs the graph-free steps (``create_graph=False``, no forward-mode tangent: the first
K - T steps of T-RHG, the K steps before an implicit solve, the forward pass of ``checkpoint=S``) through one
``torch.compile``-d function of ``(lower, project, prox, x, y, lr)``, ``grad_y f`` taken by
``torch.func.grad``. Taped steps stay eager: the reverse pass through them differentiates ``grad_y f`` again,
which compiled graphs do not support. The first call compiles (seconds to tens of seconds); later calls, also
with new objectives of the same code and shapes, reuse the compiled code.

:func:`functional` is the same step as a pure ``torch.func`` function, which the tape-free engines
(:mod:`bilevel.estimators.tape_free`) differentiate and compile as a whole, forward and reverse.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.autograd.forward_ad as fwAD

from ..problem import Problem, grad_y
from .base import Dynamics, Functional

Prox = Callable[[torch.Tensor, float], torch.Tensor]


def _descend(project, prox, y: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    """``P(prox(y - lr g, lr))``: the step, given the gradient."""
    y = y - lr * g
    if prox is not None:
        y = prox(y, lr)
    return project(y)


def _graph_free_step(lower, project, prox, x: torch.Tensor, y: torch.Tensor, lr: float):
    g = torch.func.grad(lower, argnums=1)(x, y)
    return _descend(project, prox, y, g, lr), g


def functional(problem: Problem, lr: float, prox: Optional[Prox] = None) -> Functional:
    """The gd step as a pure ``torch.func`` function (:class:`~bilevel.dynamics.base.Functional`): one form; the
    step size is its number (a tensor: one compiled graph serves every step size), except with a ``prox``, which
    takes it as a float."""
    grad = torch.func.grad(problem.lower, argnums=1)

    def update(key, x, state, numbers):
        g = grad(x, state[0])
        return (_descend(problem.project, prox, state[0], g, lr if prox is not None else numbers[0]),), g

    return Functional(lambda k: (None, (lr,)), update)


@functools.lru_cache(maxsize=None)
def compiled_graph_free_step() -> Callable:
    """The ``torch.compile``-d graph-free step shared by all gd dynamics (built on first use, so that importing
    the library does not import the compiler; torch.compile compiles on the first call)."""
    return torch.compile(_graph_free_step)


def gd(problem: Problem, lr: float, prox: Optional[Prox] = None, compile_step: bool = False) -> Dynamics:
    """Projected/proximal gradient descent on ``problem.lower`` with step ``lr``.

    ``compile_step``: run graph-free steps through ``torch.compile`` (module docstring).
    """
    if compile_step and problem.buffers is not None:
        raise ValueError("compile_step=True cannot carry module buffers (the compiled step would trace the "
                         "Buffers object); leave compile_step False when passing buffers")

    def init(x, y0):
        return (y0,)

    def step(k, x, state, create_graph):
        y = state[0]
        if compile_step and not create_graph and fwAD.unpack_dual(y).tangent is None:
            y, g = compiled_graph_free_step()(problem.lower, problem.project, prox, x.detach(), y.detach(), lr)
            return (y,), g
        g = grad_y(problem.lower, x, y, create_graph)
        return (_descend(problem.project, prox, y, g, lr),), g

    return Dynamics(init, step, functional(problem, lr, prox))
