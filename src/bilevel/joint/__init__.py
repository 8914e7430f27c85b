"""Joint (x, y) steps of the first-order family: methods whose outer step updates y with x instead of estimating
d phi / dx from an inner trajectory (BOME, V-PBGD, F2SA, MEHA, BAMM, BiC-GAFFA).

Each module has one function ``step(problem, x, y, steps, carry, **options) -> Estimate``: at the carried y (and
the method's own state ``carry``, None at the first step) it returns the x-direction (``grad_x``), the y the step
ends at (``y``) and the state for the next step (``carry``). :func:`bilevel.methods.first_order.carried` turns it
into a plan, and :class:`bilevel.OuterLoop` steps x with its optimizer, carries y and ``carry`` and checkpoints
them. No Hessian-vector products, except in BAMM (its multiplier update takes one).
"""
from . import bamm, bome, f2sa, gaffa, meha, vpbgd

__all__ = ["bamm", "bome", "f2sa", "gaffa", "meha", "vpbgd"]
