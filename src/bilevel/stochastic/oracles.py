"""Mini-batch oracles of a finite-sum bilevel problem, on flat vectors, with call counts.

``upper(x, y, idx)`` and ``lower(x, y, idx)`` are the user's objectives: the *mean* over the samples ``idx`` (a
LongTensor; ``None`` means all samples). :class:`Oracles` wraps them on the flat vectors of :mod:`bilevel._tree`
and gives the derivatives the stochastic solvers use, each one ``torch.autograd`` pass:

| oracle | value | counted (per sample) |
|---|---|---|
| ``grad_lower_y`` | ``grad_y f_B(x, y)`` | 1 inner |
| ``grads_lower`` | ``(grad_x f_B, grad_y f_B)`` | 1 inner |
| ``lower_vjp`` | ``(grad_y f_B, H_B v, J_B v)``, ``H = d2_yy f``, ``J v = d/dx <grad_y f, v>`` (one backward) | 3 inner |
| ``hvp`` / ``cross`` | ``H_B v`` / ``J_B v`` | 1 inner |
| ``hvp_cross`` | ``(H_B v, J_B v)`` | 2 inner |
| ``grads_upper`` | ``(grad_x F_B, grad_y F_B)`` | 2 outer |

The counts (:attr:`Oracles.calls`, samples times derivative evaluations) are the x-axis of the benchmark's
"oracle calls" curves; they count whole batches, also when ``data_parallel`` (:func:`bilevel.stochastic.solve`) has
each process evaluate its share of a batch and sums the shares, weighted by their sizes.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .._tree import Spec
from ..problem import _scalar

Tensor = torch.Tensor
FiniteSum = Callable[..., Tensor]


class Oracles:
    """Derivatives of the mean objectives on a batch; see the module docstring.

    Parameters
    ----------
    upper, lower : callable
        ``F(x, y, idx)`` and ``f(x, y, idx)`` on the user's structures.
    x_spec, y_spec : Spec
        The structures of x and y.
    n_upper, n_lower : int
        Number of samples of each objective.
    split : callable, optional
        ``split(idx, n) -> (local idx, weight)``: this process's share of a batch and its weight in the mean (data
        parallel); ``reduce(t) -> t`` then sums a tensor across processes.
    reduce : callable, optional
    """

    def __init__(self, upper: FiniteSum, lower: FiniteSum, x_spec: Spec, y_spec: Spec, n_upper: int, n_lower: int,
                 split: Optional[Callable] = None, reduce: Optional[Callable[[Tensor], Tensor]] = None):
        self.x_spec, self.y_spec = x_spec, y_spec
        self.n_upper, self.n_lower = n_upper, n_lower
        self._upper, self._lower = upper, lower
        self._split, self._reduce = split, reduce
        self.calls: Dict[str, int] = {"inner": 0, "outer": 0}

    # ------------------------------------------------------------------ objectives on flat vectors
    def _f(self, fn: FiniteSum, x: Tensor, y: Tensor, idx: Optional[Tensor], name: str) -> Tensor:
        return _scalar(fn(self.x_spec.unflatten(x), self.y_spec.unflatten(y), idx), name)

    def _count(self, which: str, idx: Optional[Tensor], times: int) -> None:
        n = self.n_lower if which == "inner" else self.n_upper
        self.calls[which] += times * (n if idx is None else int(idx.numel()))

    def _local(self, idx: Optional[Tensor], n: int) -> Tuple[Optional[Tensor], float]:
        if self._split is None:
            return idx, 1.0
        return self._split(idx, n)

    def _sum(self, parts: Tuple[Tensor, ...], weight: float) -> Tuple[Tensor, ...]:
        if self._reduce is None:
            return parts
        sizes = [p.numel() for p in parts]
        flat = self._reduce(torch.cat([p.reshape(-1) for p in parts]) * weight)
        return tuple(flat.split(sizes))

    # ------------------------------------------------------------------ values
    def value_lower(self, x: Tensor, y: Tensor, idx: Optional[Tensor] = None) -> Tensor:
        """``f_B(x, y)`` (not counted: values are for monitoring)."""
        with torch.no_grad():
            local, w = self._local(idx, self.n_lower)
            return self._sum((self._f(self._lower, x, y, local, "lower").reshape(1),), w)[0].reshape(())

    def value_upper(self, x: Tensor, y: Tensor, idx: Optional[Tensor] = None) -> Tensor:
        """``F_B(x, y)`` (not counted)."""
        with torch.no_grad():
            local, w = self._local(idx, self.n_upper)
            return self._sum((self._f(self._upper, x, y, local, "upper").reshape(1),), w)[0].reshape(())

    # ------------------------------------------------------------------ first order
    def _grads(self, fn: FiniteSum, x: Tensor, y: Tensor, idx: Optional[Tensor], name: str, n: int,
               need_x: bool) -> Tuple[Tensor, Tensor]:
        local, w = self._local(idx, n)
        with torch.enable_grad():
            xl = x.detach().requires_grad_(need_x)
            yl = y.detach().requires_grad_()
            out = self._f(fn, xl, yl, local, name)
            ins = (xl, yl) if need_x else (yl,)
            gs = torch.autograd.grad(out, ins, allow_unused=True)
        gs = tuple(torch.zeros_like(i) if g is None else g for g, i in zip(gs, ins))
        gs = self._sum(gs, w)
        return (gs[0], gs[1]) if need_x else (torch.zeros_like(x), gs[0])

    def grad_lower_y(self, x: Tensor, y: Tensor, idx: Optional[Tensor]) -> Tensor:
        """``grad_y f_B(x, y)``."""
        self._count("inner", idx, 1)
        return self._grads(self._lower, x, y, idx, "lower", self.n_lower, need_x=False)[1]

    def grads_lower(self, x: Tensor, y: Tensor, idx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(grad_x f_B, grad_y f_B)`` at ``(x, y)``."""
        self._count("inner", idx, 1)
        return self._grads(self._lower, x, y, idx, "lower", self.n_lower, need_x=True)

    def grads_upper(self, x: Tensor, y: Tensor, idx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(grad_x F_B, grad_y F_B)`` at ``(x, y)``."""
        self._count("outer", idx, 2)
        return self._grads(self._upper, x, y, idx, "upper", self.n_upper, need_x=True)

    # ------------------------------------------------------------------ second order
    def _vjp(self, x: Tensor, y: Tensor, v: Tensor, idx: Optional[Tensor], need_h: bool,
             need_j: bool) -> Tuple[Tensor, Tensor, Tensor]:
        local, w = self._local(idx, self.n_lower)
        with torch.enable_grad():
            xl = x.detach().requires_grad_(need_j)
            yl = y.detach().requires_grad_()
            out = self._f(self._lower, xl, yl, local, "lower")
            (g,) = torch.autograd.grad(out, yl, create_graph=True)
            ins = ((yl,) if need_h else ()) + ((xl,) if need_j else ())
            gs = torch.autograd.grad(g, ins, grad_outputs=v, allow_unused=True) if g.requires_grad else (None,) * len(ins)
        gs = [torch.zeros_like(i) if d is None else d for d, i in zip(gs, ins)]
        hv = gs.pop(0) if need_h else torch.zeros_like(y)
        jv = gs.pop(0) if need_j else torch.zeros_like(x)
        return self._sum((g.detach(), hv, jv), w)

    def lower_vjp(self, x: Tensor, y: Tensor, v: Tensor, idx: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(grad_y f_B, H_B v, J_B v)`` from one forward and two backward passes."""
        self._count("inner", idx, 3)
        return self._vjp(x, y, v, idx, True, True)

    def hvp(self, x: Tensor, y: Tensor, v: Tensor, idx: Optional[Tensor]) -> Tensor:
        """``H_B v = d2_yy f_B(x, y) v``."""
        self._count("inner", idx, 1)
        return self._vjp(x, y, v, idx, True, False)[1]

    def cross(self, x: Tensor, y: Tensor, v: Tensor, idx: Optional[Tensor]) -> Tensor:
        """``J_B v = d2_xy f_B(x, y) v``, an element of x's space."""
        self._count("inner", idx, 1)
        return self._vjp(x, y, v, idx, False, True)[2]

    def hvp_cross(self, x: Tensor, y: Tensor, v: Tensor, idx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(H_B v, J_B v)`` from one double backward."""
        self._count("inner", idx, 2)
        _, hv, jv = self._vjp(x, y, v, idx, True, True)
        return hv, jv
