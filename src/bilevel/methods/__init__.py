"""Named methods: small presets composing an inner dynamics with a hypergradient estimator.

Importing this package registers every built-in method in :data:`METHODS`.
"""
from .registry import METHODS, Method, Plan, check_checkpoint, check_float, check_int, get, register, unrolled
from . import classical  # noqa: F401  (registers rhg, fhg, trhg, cg, neumann)
from . import bda  # noqa: F401
from . import iaptt  # noqa: F401
from . import bvfim  # noqa: F401
from . import meta  # noqa: F401  (registers maml, fomaml, reptile, metasgd)
from . import first_order  # noqa: F401  (registers the first-order family: alternating, darts, ...)

__all__ = ["METHODS", "Method", "Plan", "check_checkpoint", "check_float", "check_int", "get", "register", "unrolled"]
