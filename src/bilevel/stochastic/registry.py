"""The named stochastic methods: each is a solver module's ``build`` plus its default steps.

``METHODS[name].options`` are the keyword-only parameters of ``build``, so an unknown option is refused by name, as
for the deterministic methods (:mod:`bilevel.methods.registry`). ``inner_lr`` is the step of y (and, unless a method
says otherwise, of its linear system); ``outer_lr`` the step of x. The defaults suit a strongly convex lower level
with L = 1 and condition number <= 10 (tests/core/test_stochastic_convergence.py); each method's page in
docs/methods/stochastic/ gives its options, and benchmarks/stochastic/problems.py the values tuned for the benchmark.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple

from .base import Context, Solver
from .solvers import amigo, bome, bsa, f2sa, fsla, mrbo, pzobo, saba, soba, srba, stocbio, sustain, ttsa, vrbo


@dataclass(frozen=True)
class StochasticMethod:
    """A named stochastic solver.

    Attributes
    ----------
    name : str
    build : callable
        ``build(ctx, inner_lr, outer_lr, **options) -> Solver``.
    inner_lr, outer_lr : float
        Default steps.
    summary : str
        One line for listings.
    full_batch : bool
        True for the methods that use the whole data set at every step (pzobo, bome): ``batch_size`` is unused.
    """

    name: str
    build: Callable[..., Solver]
    inner_lr: float
    outer_lr: float
    summary: str
    full_batch: bool = False

    @property
    def options(self) -> Tuple[str, ...]:
        return _keyword_only(self.build)

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for stochastic method {self.name!r}; "
                             f"its options are: {allowed}")

    def bind(self, ctx: Context, inner_lr: float, outer_lr: float, options: Mapping[str, Any]) -> Solver:
        self.check_options(options)
        return self.build(ctx, inner_lr, outer_lr, **options)


@functools.lru_cache(maxsize=None)
def _keyword_only(build: Callable[..., Solver]) -> Tuple[str, ...]:
    params = inspect.signature(build).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _m(name, module, inner_lr, outer_lr, summary, full_batch=False):
    return StochasticMethod(name, module.build, inner_lr, outer_lr, summary, full_batch)


METHODS: Dict[str, StochasticMethod] = {m.name: m for m in (
    _m("stocbio", stocbio, 0.5, 0.1, "SGD on y, stochastic Neumann series for v (Ji et al. 2021)"),
    _m("amigo", amigo, 0.5, 0.1, "SGD on y, warm-started SGD on the linear system (Arbel & Mairal 2022)"),
    _m("soba", soba, 0.5, 0.1, "one SGD step on y, v and x per iteration (Dagreou et al. 2022)"),
    _m("saba", saba, 0.5, 0.1, "SOBA with SAGA variance reduction, per-sample memories (Dagreou et al. 2022)"),
    _m("srba", srba, 0.5, 0.1, "SOBA with SARAH variance reduction (Dagreou et al. 2024)"),
    _m("ttsa", ttsa, 0.5, 0.1, "two-timescale single loop, randomised Neumann (Hong et al. 2023)"),
    _m("fsla", fsla, 0.5, 0.1, "single loop, look-ahead v, STORM momentum on x (Li et al. 2022)"),
    _m("mrbo", mrbo, 0.5, 0.1, "STORM momentum on y and x, Neumann series (Yang et al. 2021)"),
    _m("vrbo", vrbo, 0.5, 0.1, "SPIDER estimates with an inner loop, Neumann series (Yang et al. 2021)"),
    _m("bsa", bsa, 0.5, 0.1, "outer step first, randomised Neumann, then SGD on y (Ghadimi & Wang 2018)"),
    _m("sustain", sustain, 0.5, 0.1, "STORM momentum, randomised Neumann (Khanduri et al. 2021)"),
    _m("pzobo", pzobo, 0.5, 0.1, "zeroth-order Jacobian of the inner solution, full batch (Sow et al. 2022)", True),
    _m("f2sa", f2sa, 0.5, 0.1, "fully first-order penalty with a growing multiplier (Kwon et al. 2023)"),
    _m("bome", bome, 0.5, 0.1, "value-function penalty with a dynamic barrier, full batch (Liu et al. 2022)", True),
)}


def get(name: str) -> StochasticMethod:
    """The stochastic method called ``name``; a ValueError names the valid ones otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown stochastic method {name!r}; valid methods are: {', '.join(METHODS)}")
    return METHODS[name]
