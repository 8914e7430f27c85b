"""The method registry: named methods are small presets composing an inner dynamics with a hypergradient estimator.

A :class:`Method` has a ``build(problem, inner_lr, inner_steps, **options) -> Plan`` whose keyword
arguments are exactly the method's options (so unknown options are rejected by name), and a :class:`Plan`
binds the estimator (``estimate``) and the objective it differentiates (``value``). ``METHODS`` maps public
names to methods; :func:`register` adds one.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import torch

from .._validate import check_checkpoint, check_float, check_int  # re-exported: the presets' option checks
from ..dynamics.base import with_step_state
from ..estimators import Estimate, reverse
from ..problem import Problem

__all__ = ["METHODS", "Method", "Plan", "check_checkpoint", "check_float", "check_int", "get", "register",
           "unrolled"]


class Plan(NamedTuple):
    """A method bound to a problem.

    ``estimate(x, y0, steps, wrt_init) -> Estimate`` and ``value(x, y0, steps) -> (F value, y)``, the
    function of x whose gradient the method computes or approximates (used by finite-difference checks and
    for the final iterate of :func:`bilevel.solve`).
    """

    estimate: Callable[..., Estimate]
    value: Callable[[torch.Tensor, torch.Tensor, int], Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """A named method.

    Attributes
    ----------
    name : str
    build : callable
        ``build(problem, inner_lr, inner_steps, **options) -> Plan``.
    learns_init : bool
        True when the method learns the inner initialization (``res.grad_y0``).
    summary : str
        One line for listings.
    schedule : callable, optional
        ``schedule(options, t) -> options`` applied by :func:`bilevel.solve` at outer step t.
    descends_lower : bool
        True when the inner dynamics minimize f alone (gradient descent, momentum, Nesterov), so that f at the
        returned iterate must not exceed f at y0 and a growing ``||grad_y f||`` means divergence (checked by the
        public API). False for dynamics that also follow F (BDA's aggregation, BiG-SAM) or return another loop's
        iterate (BVFIM's barrier loop): f may legitimately grow there.
    own_dynamics : str
        For methods whose inner dynamics are part of the method (BDA's aggregation, Meta-SGD's learned steps,
        ...): what they are, for the error that refuses ``inner_optimizer``. Empty for the others.
    carries_y : bool
        True for the methods that update y alongside x (the first-order family: alternating, DARTS, BOME, ...):
        each outer step continues from the y the previous one ended at (``res.y``), whatever ``warm_start``
        says, and the method's own state across steps (``Estimate.carry``) is passed back to its plan's
        ``estimate(x, y, steps, wrt_init, carry=...)`` by :class:`bilevel.OuterLoop` (None at the first step).
    """

    name: str
    build: Callable[..., Plan]
    learns_init: bool = False
    summary: str = ""
    schedule: Optional[Callable[[Dict[str, Any], int], Dict[str, Any]]] = None
    descends_lower: bool = True
    own_dynamics: str = ""
    carries_y: bool = False

    @property
    def options(self) -> Tuple[str, ...]:
        """The method's option names: the keyword-only parameters of ``build``."""
        return _keyword_only(self.build)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ValueError naming any option this method does not take."""
        self.refuse_inner_optimizer(options)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {self.name!r}; "
                             f"its options are: {allowed}")

    def refuse_inner_optimizer(self, options: Mapping[str, Any]) -> None:
        """Raise ValueError when ``options`` set ``inner_optimizer`` for a method with its own dynamics."""
        asked = {"inner_optimizer", "inner_optimizer_options"} & set(options)
        if self.own_dynamics and asked and "inner_optimizer" not in self.options:
            takes = sorted(name for name, m in METHODS.items() if "inner_optimizer" in m.options)
            raise ValueError(f"method {self.name!r} has its own inner dynamics ({self.own_dynamics}), so it takes no "
                             f"inner_optimizer; the methods that do are: {', '.join(takes)}")

    def bind(self, problem: Problem, inner_lr: float, inner_steps: int, options: Mapping[str, Any]) -> Plan:
        self.check_options(options)
        return self.build(problem, inner_lr, inner_steps, **options)


@functools.lru_cache(maxsize=None)
def _keyword_only(build: Callable[..., Plan]) -> Tuple[str, ...]:
    params = inspect.signature(build).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to :data:`METHODS` (its name must be new)."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The method called ``name``; a ValueError names the valid ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods are: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def unrolled(estimator: Callable[..., Estimate], problem: Problem, dyn, **kw) -> Plan:
    """A plan differentiating (or approximating the gradient of) F(x, y_K) for dynamics ``dyn`` (which carries the
    problem's module buffers, if any)."""
    dyn = with_step_state(dyn, problem)
    est = functools.partial(estimator, problem, dyn, **kw)
    return Plan(lambda x, y0, steps, wrt_init=False: est(x, y0, steps, wrt_init=wrt_init),
                functools.partial(reverse.value, problem, dyn))


