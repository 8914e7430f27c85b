"""Proximal maps of simple nonsmooth terms, for a nonsmooth lower level ``f(x, y) + g(y)``.

A proximal map is a callable ``prox(v, step)`` returning

    prox_{step g}(v) = argmin_u  g(u) + ||u - v||^2 / (2 step).

It is what the ``lower_prox`` option of ``"bda"`` (BDA supplement D.2, Eq. 13) expects. ``v`` arrives with
the structure of the lower-level variable (a tensor, or a dict of tensors); the helpers here act
elementwise, so they accept a tensor (of any shape, including the library's flat vectors) or a dict of tensors
and return the same structure. Parameters may be numbers, tensors broadcastable to the leaves, or (for dict
variables) dicts with the same keys.

* :func:`l1` -- g(y) = lam ||y||_1, soft-thresholding ``sign(v) max(|v| - step lam, 0)``;
* :func:`box` -- g = indicator of ``{lo <= y <= hi}``, the projection ``clamp(v, lo, hi)`` (step is ignored).

Cost: one elementwise pass over y per call. Both maps are piecewise linear, so reverse mode differentiates
them exactly away from the kinks (almost everywhere), which is what the unrolled hypergradient needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch

from ._validate import check_float, check_real_param

Tree = Union[torch.Tensor, Mapping[str, torch.Tensor]]
Param = Union[float, torch.Tensor, Mapping[str, Any], None]

__all__ = ["l1", "box"]


def _leaf_param(p: Any, key: Optional[str], name: str, like: torch.Tensor) -> Any:
    if isinstance(p, Mapping):
        if key is None or key not in p:
            where = "a tensor variable" if key is None else f"key {key!r}"
            raise ValueError(f"{name} is a dict with keys {sorted(p)} but was applied to {where}; dict "
                             "parameters need a dict variable with the same keys")
        p = p[key]
    if isinstance(p, torch.Tensor):
        return p.to(dtype=like.dtype, device=like.device)
    return p


def _apply(v: Tree, fn: Callable[[torch.Tensor, Optional[str]], torch.Tensor]) -> Tree:
    if isinstance(v, Mapping):
        return {k: fn(t, k) for k, t in v.items()}
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"a prox is applied to a tensor or a dict of tensors, got {type(v).__name__}")
    return fn(v, None)


@dataclass(frozen=True)
class _L1:
    lam: Any

    def __call__(self, v: Tree, step: float) -> Tree:
        s = check_float("the prox step", step, nonnegative=True)

        def leaf(t: torch.Tensor, key: Optional[str]) -> torch.Tensor:
            thr = _leaf_param(self.lam, key, "lam", t) * s
            if isinstance(thr, torch.Tensor):
                return t - torch.maximum(torch.minimum(t, thr), -thr)
            return t - torch.clamp(t, -thr, thr)

        return _apply(v, leaf)


@dataclass(frozen=True)
class _Box:
    lo: Any
    hi: Any

    def __call__(self, v: Tree, step: float) -> Tree:
        check_float("the prox step", step, nonnegative=True)

        def leaf(t: torch.Tensor, key: Optional[str]) -> torch.Tensor:
            lo = _leaf_param(self.lo, key, "lo", t)
            hi = _leaf_param(self.hi, key, "hi", t)
            if lo is None and hi is None:
                return t
            if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
                lo_t = None if lo is None else torch.as_tensor(lo, dtype=t.dtype, device=t.device)
                hi_t = None if hi is None else torch.as_tensor(hi, dtype=t.dtype, device=t.device)
                return torch.clamp(t, lo_t, hi_t)
            return torch.clamp(t, lo, hi)

        return _apply(v, leaf)


def l1(lam: Param) -> Callable[[Tree, float], Tree]:
    """Soft-thresholding: the prox of ``g(y) = lam * ||y||_1``.

    ``prox(v, step) = sign(v) * max(|v| - step * lam, 0)`` elementwise.

    Parameters
    ----------
    lam : float, Tensor or dict
        Regularization weight(s), >= 0; a tensor broadcasts against each leaf, a dict gives one weight per key
        of a dict variable.

    Returns
    -------
    callable
        ``prox(v, step)`` on a tensor or a dict of tensors.
    """
    return _L1(check_real_param("lam", lam, nonnegative=True))


def box(lo: Param = None, hi: Param = None) -> Callable[[Tree, float], Tree]:
    """The prox of the indicator of the box ``lo <= y <= hi``: the projection ``clamp(v, lo, hi)``.

    The step is ignored (the prox of an indicator does not depend on it). Inside ``"bda"`` with
    ``alpha = 0`` this is the same map as the ``y_bounds=(lo, hi)`` projection.

    Parameters
    ----------
    lo, hi : float, Tensor, dict or None
        Bounds (None: open side); a dict gives bounds per key of a dict variable.

    Returns
    -------
    callable
        ``prox(v, step)`` on a tensor or a dict of tensors.
    """
    lo_c = check_real_param("lo", lo, finite=False, allow_none=True)
    hi_c = check_real_param("hi", hi, finite=False, allow_none=True)
    if isinstance(lo_c, float) and isinstance(hi_c, float) and lo_c > hi_c:
        raise ValueError(f"box: lo = {lo_c} exceeds hi = {hi_c}")
    return _Box(lo_c, hi_c)
