"""The bilevel problem on flat vectors, and the derivative helpers every piece shares.

``min_x F(x, y*(x))`` with ``y*(x) = argmin_y f(x, y)``. :class:`Problem` holds ``F`` (``upper``) and ``f``
(``lower``) as functions of the flat vectors of :mod:`bilevel._tree`, plus the projection onto the lower
level's constraint set. The derivative helpers use ``torch.autograd`` directly: it is the cheapest tape on
CPU, and it composes with forward-mode dual tensors (``torch.autograd.forward_ad``), so one step function
serves reverse mode, forward mode and graph-free runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from ._tree import Spec, Tree

FlatFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _scalar(out: object, name: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the {name} objective must return a scalar tensor, got {type(out).__name__}")
    if out.dim() == 0:
        return out
    if out.numel() != 1:
        raise ValueError(f"the {name} objective must return a scalar tensor, got shape {tuple(out.shape)}")
    return out.reshape(())


@dataclass(frozen=True)
class Problem:
    """A bilevel problem on flat vectors.

    Attributes
    ----------
    upper, lower : callable
        ``F(x_flat, y_flat)`` and ``f(x_flat, y_flat)``, scalar tensors.
    x_spec, y_spec : Spec
        Structures of the user's variables.
    project_y : callable or None
        Projection of a flat ``y`` onto the lower-level constraint set (None: unconstrained).
    """

    upper: FlatFn
    lower: FlatFn
    x_spec: Spec
    y_spec: Spec
    project_y: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    @staticmethod
    def from_user(upper: Callable[[Tree, Tree], torch.Tensor], lower: Callable[[Tree, Tree], torch.Tensor],
                  x_spec: Spec, y_spec: Spec,
                  project_y: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> "Problem":
        """Wrap user objectives on tensors/dicts into flat-vector objectives with scalar checks."""

        def F(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return _scalar(upper(x_spec.unflatten(x), y_spec.unflatten(y)), "upper")

        def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return _scalar(lower(x_spec.unflatten(x), y_spec.unflatten(y)), "lower")

        return Problem(F, f, x_spec, y_spec, project_y)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.project_y is None else self.project_y(y)


def requires_grad_leaf(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if it is on the tape, else a leaf copy that requires grad (keeping a forward tangent)."""
    if t.requires_grad:
        return t
    primal, tangent = fwAD.unpack_dual(t)
    leaf = primal.detach().requires_grad_()
    return leaf if tangent is None else fwAD.make_dual(leaf, tangent)


def grad_y(fn: FlatFn, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``d fn(x, y) / dy``.

    With ``create_graph=True`` the result is differentiable in ``x`` and in whatever ``y`` came from (reverse
    mode through an unroll). With ``create_graph=False`` it is a constant for the tape but still carries
    forward-mode tangents. Cost: one evaluation of ``fn`` and one backward pass.
    """
    with torch.enable_grad():
        y = requires_grad_leaf(y)
        (g,) = torch.autograd.grad(fn(x, y), y, create_graph=create_graph)
    return g


def value_and_grads(fn: FlatFn, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fn(x, y), d/dx, d/dy)`` at constants ``x, y``; one forward and one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = y.detach().requires_grad_()
        val = fn(x, y)
        gx, gy = torch.autograd.grad(val, (x, y), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy
    return val.detach(), gx, gy
