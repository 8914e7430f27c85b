"""Test problems with known solutions, defined once (torch only).

* :mod:`~bilevel.problems.quadratic` -- random strongly convex quadratics with closed-form hypergradients
  (:func:`make_quadratic`, :func:`ift_closed_form`, :func:`make_simple_quadratic`);
* :mod:`~bilevel.problems.bda_counterexample` -- BDA Eq. 5 (singular convex follower, x* = 1);
* :mod:`~bilevel.problems.iaptt_toy` -- IAPTT-GM Eq. 10 (nonconvex follower, x* = 11 pi / 4);
* :mod:`~bilevel.problems.llc` -- IAPTT-GM Eq. 13 (:func:`llc_problem`, x* = e).

Each module holds the objectives, the known solution and the standard starting point; importing the package
builds no tensors.
"""
from . import bda_counterexample, iaptt_toy, llc, quadratic
from .llc import llc_problem
from .quadratic import ift_closed_form, make_quadratic, make_simple_quadratic

__all__ = ["bda_counterexample", "iaptt_toy", "llc", "quadratic", "llc_problem", "make_quadratic",
           "ift_closed_form", "make_simple_quadratic"]
