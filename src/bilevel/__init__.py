"""bilevel: gradient-based bilevel optimization in PyTorch.

``min_x F(x, y*(x))`` with ``y*(x) = argmin_y f(x, y)``. The functional core:

* :func:`hypergrad` -- the hypergradient of one method at one x;
* :func:`solve` -- an outer optimization loop around it;
* :func:`check_hypergrad` -- finite-difference check of any method;
* :data:`METHODS` -- the named methods (inner dynamics composed with a hypergradient estimator);
* :class:`Factored` -- an objective ``head(features(x), y)`` whose x-only part is computed once per x.

This package is the core: it imports torch, numpy and the standard library only. ``bilevel.parallel`` (the
torch.distributed helpers) is imported on demand; the command line, runs, tasks, data and reproductions live in
``bilevel.app`` on top (docs/architecture.md).
"""
from . import callbacks, dynamics, estimators, implicit_diff, linear_solve, models, problems, prox, schedules
from .api import HypergradCheck, HypergradResult, OuterLoop, SolveResult, check_hypergrad, hypergrad, solve
from .errors import NonFiniteError
from .methods import METHODS, Method, Plan, register
from .problem import Factored

__version__ = "0.1.0"

__all__ = [
    "METHODS", "Method", "OuterLoop", "Plan", "register", "hypergrad", "solve", "check_hypergrad", "HypergradResult",
    "SolveResult", "HypergradCheck", "NonFiniteError", "dynamics", "estimators", "implicit_diff", "linear_solve", "models",
    "problems", "prox", "schedules", "Factored", "callbacks",
]
