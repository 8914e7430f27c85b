"""Gradient descent on the lower level, optionally projected or proximal.

``y_{k+1} = P( prox_{s g}( y_k - s * grad_y f(x, y_k) ) )``, s = ``lr``; ``prox`` is the proximal map of a
nonsmooth term g (``prox(v, s)``), P the projection onto the lower-level constraint set. Without them this
is the plain unroll of RHG/FHG/T-RHG and the warm-up of the implicit methods.

Cost per step: one evaluation of f and one backward pass (a Hessian-vector product's worth more when the
step is differentiated in reverse mode).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..problem import Problem, grad_y
from .base import Dynamics

Prox = Callable[[torch.Tensor, float], torch.Tensor]


def gd(problem: Problem, lr: float, prox: Optional[Prox] = None) -> Dynamics:
    """Projected/proximal gradient descent on ``problem.lower`` with step ``lr``."""

    def init(x, y0):
        return (y0,)

    def step(k, x, state, create_graph):
        y = state[0]
        g = grad_y(problem.lower, x, y, create_graph)
        y = y - lr * g
        if prox is not None:
            y = prox(y, lr)
        return (problem.project(y),), g

    return Dynamics(init, step)
