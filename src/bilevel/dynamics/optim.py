"""Differentiable inner optimizers with ``torch.optim``'s update rules: momentum, Nesterov, Adam, AdamW, RMSprop.

Each is a :class:`~bilevel.dynamics.base.Dynamics` whose state is ``(y_k, *optimizer state)``, so the optimizer
state is carried, checkpointed, tangent-propagated (forward mode) and differentiated (reverse mode) exactly like
the iterate. With g_k = grad_y f(x, y_k) (plus ``weight_decay * y_k`` where torch adds it to the gradient),
t = k + 1 and s = ``lr``, the steps are torch.optim's (torch 2.x, single-tensor path):

- ``momentum`` (``SGD(momentum=mu, dampening=d)``): ``b_1 = g_1``, ``b_t = mu b_{t-1} + (1 - d) g_t``,
  ``y <- y - s b_t``; ``nesterov`` (``SGD(nesterov=True)``): ``y <- y - s (g_t + mu b_t)``.
- ``adam``: ``m_t = beta1 m + (1 - beta1) g``, ``v_t = beta2 v + (1 - beta2) g^2``,
  ``y <- y - (s / (1 - beta1^t)) m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)``; ``adamw`` instead multiplies
  ``y`` by ``1 - s * weight_decay`` first and does not add the decay to g.
- ``rmsprop``: ``a_t = alpha a + (1 - alpha) g^2`` (``centered``: minus ``gbar_t^2``, ``gbar_t = alpha gbar +
  (1 - alpha) g``), ``d = sqrt(a_t) + eps``; without momentum ``y <- y - s g / d``, with momentum mu
  ``b_t = mu b + g / d``, ``y <- y - s b_t``.

Every rule is elementwise, so on the flattened iterate it equals torch.optim on each tensor of a dict.

**The square root at 0.** ``sqrt`` has an infinite derivative at 0, and a gradient component that is exactly 0
at every step so far (a dead unit, an unused class) leaves ``v = 0``: differentiated naively, the unroll gets
``0 * inf = nan``. Here the square root of the second-moment estimate has derivative 0 where its argument is
``<= 0`` (and the value 0 there): the midpoint of the one-sided derivatives ``+-sqrt(1 - beta2)`` of
``sqrt(v(g))`` at ``g = 0``. Where ``v > 0`` values and derivatives are the exact ones.

Each also has its :class:`~bilevel.dynamics.base.Functional` form (the same step through ``torch.func``; Adam's
bias corrections are its per-step numbers, momentum's first step its own form) for the tape-free engines.

Cost per step: the gradient step's (one f evaluation and one backward pass; a Hessian-vector product's worth more
when the step is differentiated in reverse mode) plus a few elementwise operations. Memory on the reverse tape:
per step, one buffer the size of y for momentum / Nesterov, two for Adam / AdamW, one for RMSprop (two centered,
three centered with momentum), next to gradient descent's iterate.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .._validate import check_bool, check_float, check_interval
from ..problem import Problem, grad_y
from .base import Dynamics, Functional, State
from .gd import gd

__all__ = ["OPTIMIZERS", "DEFAULTS", "optimizer_options", "inner_optimizer", "momentum", "adam", "rmsprop"]

#: the accepted ``inner_optimizer`` names
OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "adamw", "rmsprop")

#: each optimizer's options and defaults: torch.optim's, except ``momentum = 0.9`` for momentum / Nesterov
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "gd": {},
    "momentum": {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
    "nesterov": {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
}


def optimizer_options(name: Any, options: Optional[Mapping[str, Any]] = None) -> Tuple[str, Dict[str, Any]]:
    """``(name, options)`` validated, the options completed with :data:`DEFAULTS`.

    Raises
    ------
    ValueError
        An unknown optimizer, an unknown option (the message names the allowed ones) or a value out of range.
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"inner_optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValueError(f"inner_optimizer_options must be a dict of keyword arguments, got {options!r}")
    allowed = DEFAULTS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown inner_optimizer_options {', '.join(map(repr, unknown))} for {name!r}; allowed: "
                         + (", ".join(allowed) or "none (plain gradient descent has no options)"))
    o = {**allowed, **options}
    if "momentum" in o:
        o["momentum"] = check_interval("momentum", o["momentum"], 0.0, 1.0, open_high=True)
    if "dampening" in o:
        o["dampening"] = check_interval("dampening", o["dampening"], 0.0, 1.0)
    if "weight_decay" in o:
        o["weight_decay"] = check_float("weight_decay", o["weight_decay"], nonnegative=True)
    if "eps" in o:
        o["eps"] = check_float("eps", o["eps"], positive=True)
    if "alpha" in o:
        o["alpha"] = check_interval("alpha", o["alpha"], 0.0, 1.0, open_high=True)
    if "centered" in o:
        o["centered"] = check_bool("centered", o["centered"])
    if "betas" in o:
        b = o["betas"]
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {b!r}")
        o["betas"] = (check_interval("betas[0]", b[0], 0.0, 1.0, open_high=True),
                      check_interval("betas[1]", b[1], 0.0, 1.0, open_high=True))
    if name == "nesterov" and (o["momentum"] <= 0.0 or o["dampening"] != 0.0):
        raise ValueError(f"nesterov needs momentum > 0 and dampening = 0 (as torch.optim.SGD), got momentum = "
                         f"{o['momentum']}, dampening = {o['dampening']}")
    return name, o


def inner_optimizer(problem: Problem, lr: float, name: Any = "gd", options: Optional[Mapping[str, Any]] = None,
                    compile_step: bool = False) -> Dynamics:
    """The dynamics of ``inner_optimizer = name`` with ``inner_optimizer_options = options`` (validated by
    :func:`optimizer_options`); ``"gd"`` is :func:`bilevel.dynamics.gd` (which alone can ``compile_step``)."""
    name, o = optimizer_options(name, options)
    if name == "gd":
        return gd(problem, lr, compile_step=compile_step)
    if compile_step:
        raise ValueError(f"compile_step=True compiles plain gradient-descent steps only; inner_optimizer={name!r} "
                         "runs eagerly (leave compile_step False)")
    if name in ("momentum", "nesterov"):
        return momentum(problem, lr, nesterov=name == "nesterov", **o)
    if name in ("adam", "adamw"):
        return adam(problem, lr, decoupled=name == "adamw", **o)
    return rmsprop(problem, lr, **o)


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """``sqrt(v)`` for ``v > 0`` and 0 elsewhere, with derivative 0 where ``v <= 0`` (module docstring)."""
    pos = v > 0
    return torch.where(pos, v, torch.ones_like(v)).sqrt() * pos


def _grad(problem: Problem, x: torch.Tensor, y: torch.Tensor, create_graph: bool, weight_decay: float):
    g = grad_y(problem.lower, x, y, create_graph)
    return g, (g if weight_decay == 0.0 else g + weight_decay * y)


def _func_grad(problem: Problem, weight_decay: float):
    """``(x, y) -> (g, g + weight_decay * y)`` through ``torch.func`` (the functional form's gradient)."""
    grad = torch.func.grad(problem.lower, argnums=1)

    def fn(x: torch.Tensor, y: torch.Tensor):
        g = grad(x, y)
        return g, (g if weight_decay == 0.0 else g + weight_decay * y)

    return fn


def _with_functional(problem: Problem, weight_decay: float, init, body, coefficients) -> Dynamics:
    """A dynamics from one step ``body(key, numbers, grads, x, state) -> (state, g)``, with ``grads(x, y)`` the
    autograd gradient in ``step`` and the ``torch.func`` one in the functional form; ``coefficients(k)`` gives
    ``(key, numbers)`` (:class:`~bilevel.dynamics.base.Functional`)."""
    func_grads = _func_grad(problem, weight_decay)

    def step(k: int, x: torch.Tensor, state: State, create_graph: bool):
        key, numbers = coefficients(k)
        return body(key, numbers, lambda a, b: _grad(problem, a, b, create_graph, weight_decay), x, state)

    def update(key, x, state, numbers):
        return body(key, numbers, func_grads, x, state)

    return Dynamics(init, step, Functional(coefficients, update))


def momentum(problem: Problem, lr: float, *, momentum: float = 0.9, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False) -> Dynamics:
    """Heavy-ball (``nesterov=False``) or Nesterov SGD as ``torch.optim.SGD``; state ``(y, buffer)``."""

    def init(x: torch.Tensor, y0: torch.Tensor) -> State:
        return (y0, torch.zeros_like(y0))

    def body(first, numbers, grads, x: torch.Tensor, state: State):
        y, buf = state
        g, d = grads(x, y)
        buf = d if first else momentum * buf + (1.0 - dampening) * d
        direction = d + momentum * buf if nesterov else buf
        return (problem.project(y - lr * direction), buf), g

    return _with_functional(problem, weight_decay, init, body, lambda k: (k == 0, ()))


def adam(problem: Problem, lr: float, *, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled: bool = False) -> Dynamics:
    """Adam (``decoupled=False``) or AdamW as ``torch.optim.Adam`` / ``AdamW``; state ``(y, m, v)``."""
    b1, b2 = betas

    def init(x: torch.Tensor, y0: torch.Tensor) -> State:
        return (y0, torch.zeros_like(y0), torch.zeros_like(y0))

    def coefficients(k: int):  # the bias corrections of step t = k + 1
        t = k + 1
        return None, (math.sqrt(1.0 - b2 ** t), lr / (1.0 - b1 ** t))

    def body(key, numbers, grads, x: torch.Tensor, state: State):
        y, m, v = state
        correction2, step_size = numbers[0], numbers[1]
        g, d = grads(x, y)
        if decoupled and weight_decay != 0.0:
            y = y * (1.0 - lr * weight_decay)
        # the operations in torch.optim.Adam's order, so that float64 results agree to round-off
        m = torch.lerp(m, d, 1.0 - b1)
        v = b2 * v + (1.0 - b2) * (d * d)
        denom = _sqrt(v) / correction2 + eps
        y = y - step_size * (m / denom)
        return (problem.project(y), m, v), g

    return _with_functional(problem, 0.0 if decoupled else weight_decay, init, body, coefficients)


def rmsprop(problem: Problem, lr: float, *, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            centered: bool = False, weight_decay: float = 0.0) -> Dynamics:
    """RMSprop as ``torch.optim.RMSprop``; state ``(y, square average, gradient average, buffer)`` (the last
    two zero and unused unless ``centered`` / ``momentum > 0``)."""

    def init(x: torch.Tensor, y0: torch.Tensor) -> State:
        z = torch.zeros_like(y0)
        return (y0, z, z, z)

    def body(key, numbers, grads, x: torch.Tensor, state: State):
        y, sq, gavg, buf = state
        g, d = grads(x, y)
        sq = alpha * sq + (1.0 - alpha) * (d * d)
        if centered:
            gavg = torch.lerp(gavg, d, 1.0 - alpha)
            avg = _sqrt(sq - gavg * gavg) + eps
        else:
            avg = _sqrt(sq) + eps
        if momentum > 0.0:
            buf = momentum * buf + d / avg
            y = y - lr * buf
        else:
            y = y - lr * (d / avg)
        return (problem.project(y), sq, gavg, buf), g

    return _with_functional(problem, weight_decay, init, body, lambda k: (None, ()))
