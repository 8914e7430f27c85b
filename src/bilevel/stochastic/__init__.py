"""Stochastic bilevel optimization on finite-sum objectives: 14 single- and double-loop solvers on mini-batches.

``upper(x, y, idx)`` and ``lower(x, y, idx)`` are means over sample indices (``idx=None``: all samples).

* :func:`solve` -- run a method for a number of outer iterations, with history, metrics and checkpoints;
* :class:`StochasticLoop` -- the same, step by step, with ``state_dict`` / ``load_state_dict``;
* :data:`METHODS` -- the methods (each a module of :mod:`bilevel.stochastic.solvers`);
* :class:`BatchSampler`, :class:`StepBatches` -- the seeded mini-batch draws.

Every method is built from a :class:`~bilevel.stochastic.base.Context` (oracles, samplers, generator) and its
keyword-only options, and is a pair ``init(x, y) -> state``, ``step(state, t) -> state`` on flat tensors. Like the
rest of the core this package imports torch, numpy and the standard library only.
"""
from .base import Context, Solver
from .loop import StochasticLoop, StochasticResult, solve
from .oracles import Oracles
from .registry import METHODS, StochasticMethod, get
from .sampler import BatchSampler, StepBatches, derive_seed, generator

__all__ = ["solve", "StochasticLoop", "StochasticResult", "METHODS", "StochasticMethod", "get", "Context", "Solver",
           "Oracles", "BatchSampler", "StepBatches", "derive_seed", "generator"]
