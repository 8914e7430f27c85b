"""FHG: forward-mode differentiation of the unroll (Franceschi et al., 2017, forward-mode hypergradient).

The tangent Z_k = d y_k / d x . e_i is pushed forward with the iterate,

    Z_{k+1} = A_k Z_k + B_k e_i,      d phi_K/dx . e_i = grad_x F . e_i + grad_y F . Z_K,

using dual numbers (``torch.autograd.forward_ad``): every step is run without a tape, so memory does not
grow with K. One pass per coordinate of x: cost ~ dim(x) x (plain inner loop), which is cheap for a few
hyperparameters (weight decay, step sizes) and expensive for many. Equal to RHG to round-off.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from ..dynamics.base import Dynamics, run
from ..problem import Problem
from .base import Estimate, check_finite


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False) -> Estimate:
    """Gradient of F(x, y_K(x)) by one forward-mode pass per coordinate of x."""
    if wrt_init:
        raise ValueError("fhg does not differentiate the initialization; use rhg or an IA method")
    x = x.detach()
    y0 = y0.detach()
    grad = torch.empty_like(x)
    info: dict = {}
    y = y0
    upper = None
    basis = torch.zeros_like(x)
    with fwAD.dual_level(), torch.no_grad():
        for i in range(x.numel()):
            basis.zero_()
            basis[i] = 1.0
            xd = fwAD.make_dual(x, basis)
            state = run(dyn, xd, dyn.init(xd, y0), 0, steps, create_graph=False, info=info)
            out = problem.upper(xd, state[0])
            primal, tangent = fwAD.unpack_dual(out)
            grad[i] = 0.0 if tangent is None else tangent
            if upper is None:
                upper = primal.clone()
                y = fwAD.unpack_dual(state[0]).primal.clone()
    check_finite(upper, f"the upper objective after {steps} inner steps")
    info["upper"] = upper
    return Estimate(grad, None, y, info)
