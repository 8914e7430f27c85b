"""Hypergradient estimators: how an inner trajectory is turned into d phi / dx.

Each module exposes ``estimate(problem, dynamics, x, y0, steps, *, wrt_init, ...) -> Estimate`` and, where
the estimate is the exact gradient of a well-defined function, ``value(...)`` computing that function
(:mod:`.first_order` names its two estimators ``first_order_estimate`` and ``reptile_estimate``).
"""
from . import first_order, forward, iga, implicit, one_step, ptt, reverse, tape_free, truncated, value_function
from .base import Estimate

__all__ = ["Estimate", "first_order", "forward", "iga", "implicit", "one_step", "ptt", "reverse", "tape_free",
           "truncated", "value_function"]
