"""Meta-SGD dynamics: gradient descent with learned per-parameter step sizes (Li, Zhou, Chen & Li, 2017).

The upper-level variable x *is* the step-size tensor: every inner step is ::

    y_{k+1} = P( y_k - s * a(x) (.) grad_y f(x, y_k) ),   k = 0..K-1,

with ``(.)`` the element-wise product, s = ``lr`` (``inner_lr``), P the projection onto the lower-level
constraint set and ``a(x)`` the step multipliers read from x and broadcast to y's shape
(:func:`step_multipliers`). The paper's step vector alpha is ``s * a``; with ``a = 1`` the step is plain
gradient descent (:func:`bilevel.dynamics.gd`), i.e. MAML's inner loop. Differentiated in reverse mode, the
unroll gives d F(x, y_K) / d a and d F / d y_0 in one backward pass (``"metasgd"`` in
:mod:`bilevel.methods.meta`).

Cost per step: as :func:`bilevel.dynamics.gd` (one evaluation of f and one backward pass; a Hessian-vector
product's worth more when differentiated in reverse mode) plus one element-wise product; memory the same.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._tree import Spec
from ..problem import Problem, grad_y
from .base import Dynamics

__all__ = ["metasgd", "step_multipliers"]


def step_multipliers(x_spec: Spec, y_spec: Spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map from the flat x to the flat per-entry step multipliers of y.

    x must have the structure of y: a tensor when y is a tensor, a dict with exactly y's keys when y is a
    dict; each tensor of x must have the shape of the matching tensor of y or a shape that broadcasts to it
    (a scalar per tensor gives per-layer step sizes; a shape without y's leading task axis shares the steps
    across the tasks of a meta-batch).

    Parameters
    ----------
    x_spec, y_spec : Spec
        Structures of the upper variable (the multipliers) and of the lower variable.

    Returns
    -------
    callable
        ``a(x_flat) -> Tensor`` of y's flat length, differentiable in ``x_flat`` (the identity when the
        shapes are equal).

    Raises
    ------
    ValueError
        When the structures do not match.
    """
    def mismatch(detail: str) -> ValueError:
        return ValueError(f"metasgd: x holds the per-parameter inner step sizes and must have the structure of y "
                          f"(the same dict keys; each tensor of y's shape or broadcastable to it, e.g. a scalar "
                          f"per tensor for per-layer steps); {detail}: x is {x_spec.describe()}, y is "
                          f"{y_spec.describe()}")

    if (x_spec.keys is None) != (y_spec.keys is None):
        raise mismatch("one is a dict and the other a tensor")
    if x_spec.keys is not None and set(x_spec.keys) != set(y_spec.keys):
        raise mismatch("the dict keys differ")
    y_keys = (None,) if y_spec.keys is None else y_spec.keys
    x_keys = (None,) if x_spec.keys is None else x_spec.keys
    x_shape = dict(zip(x_keys, x_spec.shapes))
    for key, ys in zip(y_keys, y_spec.shapes):
        xs = x_shape[key]
        try:
            ok = torch.broadcast_shapes(xs, ys) == ys
        except RuntimeError:
            ok = False
        if not ok:
            where = "" if key is None else f" for {key!r}"
            raise mismatch(f"shape {tuple(xs)}{where} does not broadcast to {tuple(ys)}")
    if x_spec.keys == y_spec.keys and x_spec.shapes == y_spec.shapes:
        return lambda x: x

    def expand(x: torch.Tensor) -> torch.Tensor:
        tree = x_spec.unflatten(x)
        leaves = [tree] if x_spec.keys is None else [tree[k] for k in y_keys]
        return torch.cat([t.expand(s).reshape(-1) for t, s in zip(leaves, y_spec.shapes)])

    return expand


def metasgd(problem: Problem, lr: float) -> Dynamics:
    """Gradient descent on ``problem.lower`` with per-entry steps ``lr * a(x)`` (see the module docstring).

    Parameters
    ----------
    problem : Problem
        The bilevel problem; x (``problem.x_spec``) holds the step multipliers of y (``problem.y_spec``).
    lr : float
        Common factor s of the steps (> 0).

    Returns
    -------
    Dynamics
        State ``(y_k,)``; ``step`` returns the lower-level gradient at ``y_k``.

    Raises
    ------
    ValueError
        When x does not have y's structure (:func:`step_multipliers`).
    """
    multipliers = step_multipliers(problem.x_spec, problem.y_spec)

    def init(x, y0):
        return (y0,)

    def step(k, x, state, create_graph):
        y = state[0]
        g = grad_y(problem.lower, x, y, create_graph)
        return (problem.project(y - lr * (multipliers(x) * g)),), g

    return Dynamics(init, step)
