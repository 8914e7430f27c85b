"""What every hypergradient estimator returns, and the checks they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..errors import NonFiniteError
from ..dynamics.base import nonfinite_kind
from ..problem import grads_or_zeros  # noqa: F401 (estimators import it from here)


@dataclass
class Estimate:
    """A hypergradient on flat vectors.

    Attributes
    ----------
    grad_x : Tensor
        Estimate of d phi / dx (flat).
    grad_y0 : Tensor or None
        Gradient w.r.t. the inner initialization (methods that learn it), else None.
    y : Tensor
        The lower-level iterate the estimate was taken at (flat, detached).
    info : dict
        Diagnostics; tensors are converted to floats by the public API.
    carry : dict or None
        Method state that lives across outer steps (a multiplier, an auxiliary variable; methods with
        ``Method.carries_y``): handed back to the method's next ``estimate(..., carry=...)`` by
        :class:`bilevel.OuterLoop`, which checkpoints it. None for the others.
    """

    grad_x: torch.Tensor
    grad_y0: Optional[torch.Tensor]
    y: torch.Tensor
    info: Dict[str, object] = field(default_factory=dict)
    carry: Optional[Dict[str, torch.Tensor]] = None


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    kind = nonfinite_kind(t)
    if kind is not None:
        raise NonFiniteError(f"{kind} in {what}")
    return t
