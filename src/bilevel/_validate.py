"""Argument checks of the core, in one place.

Each function validates one argument and returns it (converted where said); a ValueError names the argument,
what it got, and what is allowed. The core's public functions, the dynamics, the estimators and the methods'
options use these, so that the same mistake gets the same message everywhere.

Conventions shared by all checks:

* a bool is neither an integer nor a real number (``True`` is not ``1`` here);
* an integer is any :class:`numbers.Integral` (Python or NumPy), returned as an ``int``;
* a real number is any :class:`numbers.Real` or a one-element real tensor, returned as a ``float``;
  nan and +-inf are rejected unless said otherwise;
* ``allow_none=True`` lets ``None`` through unchanged (an option left at its default).

Cost: a few ``isinstance`` tests and comparisons per call (one host synchronisation for a CUDA tensor), cheap
enough for the checks made at every inner step (:func:`check_step_index`, :func:`check_fraction`).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Optional

import torch

__all__ = ["check_int", "check_float", "check_interval", "check_fraction", "check_bool", "check_callable",
           "check_step_index", "check_checkpoint", "check_real_param"]


def _real(value: Any) -> Optional[float]:
    """``float(value)`` for a real number or a one-element real tensor (not a bool); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if (isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool
            and not value.is_complex()):
        return float(value)
    return None


def _none_or(allow_none: bool) -> str:
    return "None or " if allow_none else ""


def check_int(name: str, value: Any, low: int, high: Optional[int] = None, *, allow_none: bool = False,
              who: str = "") -> Optional[int]:
    """An integer (not a bool) in ``[low, high]``, bounds included.

    Parameters
    ----------
    name : str
        The argument's name, as the message shows it.
    value : object
        The value to check.
    low : int
        Smallest allowed value.
    high : int, optional
        Largest allowed value (default: no upper bound).
    allow_none : bool
        Let ``None`` through.
    who : str, optional
        What needs the argument; the message then reads ``"{who} needs {name} >= {low}, got ..."``.

    Returns
    -------
    int or None
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = f"{_none_or(allow_none)}an integer"
        raise ValueError(f"{who} needs {name} to be {kind}, got {value!r}" if who else
                         f"{name} must be {kind}, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{who} needs {name} {rng}, got {value}" if who else f"{name} must be {rng}, got {value}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False,
                allow_none: bool = False) -> Optional[float]:
    """A finite real number, optionally ``> 0`` (``positive``) or ``>= 0`` (``nonnegative``), as a float.

    Parameters
    ----------
    name : str
        The argument's name, as the message shows it.
    value : object
        A real number or a one-element tensor; not a bool, nan or +-inf.
    positive, nonnegative : bool
        Require ``value > 0`` / ``value >= 0``.
    allow_none : bool
        Let ``None`` through.

    Returns
    -------
    float or None
    """
    if value is None and allow_none:
        return None
    v = _real(value)
    if v is None:
        sign = " > 0" if positive else " >= 0" if nonnegative else ""
        raise ValueError(f"{name} must be {_none_or(allow_none)}a real number{sign}, got {value!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def check_interval(name: str, value: Any, low: float, high: float, *, open_low: bool = False,
                   open_high: bool = False, allow_none: bool = False) -> Optional[float]:
    """A real number in the bounded interval from ``low`` to ``high``, as a float.

    The bounds are included unless ``open_low`` / ``open_high`` (``low=0, high=1, open_low=True`` is ``(0, 1]``);
    nan and +-inf are outside every interval.

    Parameters
    ----------
    name : str
        The argument's name, as the message shows it.
    value : object
        A real number or a one-element tensor; not a bool.
    low, high : float
        The finite ends of the interval.
    open_low, open_high : bool
        Exclude the lower / upper end.
    allow_none : bool
        Let ``None`` through.

    Returns
    -------
    float or None
    """
    if value is None and allow_none:
        return None
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    v = _real(value)
    if v is None:
        raise ValueError(f"{name} must be {_none_or(allow_none)}a real number in {interval}, got {value!r}")
    above = v > low if open_low else v >= low
    below = v < high if open_high else v <= high
    if not (above and below):  # also catches nan
        raise ValueError(f"{name} must be in {interval}, got {v}")
    return v


def check_fraction(name: str, value: Any) -> float:
    """A weight (fraction, probability) in ``[0, 1]``, as a float.

    Meant for values produced as they are used (a schedule's ``alpha_k``): the message reports the value,
    ``"alpha(3) = -1.0 is outside [0, 1]"``.

    Parameters
    ----------
    name : str
        What the value is, as the message shows it (e.g. ``"alpha(3)"``).
    value : object
        A real number or a one-element tensor; not a bool, not nan.

    Returns
    -------
    float
    """
    v = _real(value)
    if v is None:
        raise ValueError(f"{name} must be a real number in [0, 1], got {value!r}")
    if not 0.0 <= v <= 1.0:  # also catches nan
        raise ValueError(f"{name} = {v} is outside [0, 1]")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_callable(name: str, value: Any, signature: str, *, allow_none: bool = False) -> Optional[Callable]:
    """A callable (or None with ``allow_none``); ``signature`` describes the expected call in the message.

    Example: ``check_callable("prox", p, "prox(v, step)", allow_none=True)`` raises
    ``"prox must be a callable prox(v, step) or None, got int"``.
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        raise ValueError(f"{name} must be a callable {signature}{' or None' if allow_none else ''}, got "
                         f"{type(value).__name__}")
    return value


def check_step_index(k: Any, first: int = 1) -> int:
    """The inner step number ``k`` a step-indexed function is called with: an integer ``>= first``.

    ``first`` is 1 for the 1-based step numbers of schedules (``alpha_k``, k = 1..K) and 0 for the 0-based step
    index of the dynamics (k = 0..K-1).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < first:
        raise ValueError(f"the {first}-based inner step number k must be an integer >= {first}, got {k!r}")
    return int(k)


def check_checkpoint(checkpoint: Any) -> Optional[int]:
    """The ``checkpoint`` memory-mode option of reverse-mode methods: None or a segment length >= 1."""
    return check_int("checkpoint", checkpoint, 1, allow_none=True)


def check_real_param(name: str, value: Any, *, nonnegative: bool = False, finite: bool = True,
                     allow_none: bool = False) -> Any:
    """An elementwise real parameter: a number, a tensor (any shape) or a dict of them.

    Every entry must not be nan, must be finite (unless ``finite=False``, e.g. for bounds that may be +-inf)
    and ``>= 0`` with ``nonnegative``. Dicts are checked per key (``"lam['a']"`` in messages).

    Returns
    -------
    float, Tensor, dict or None
        A number as a float, a tensor unchanged, a dict with its entries checked; None with ``allow_none``.
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a number, a tensor or a dict of them, got None")
    if isinstance(value, Mapping):
        return {k: check_real_param(f"{name}[{k!r}]", v, nonnegative=nonnegative, finite=finite,
                                    allow_none=allow_none) for k, v in value.items()}
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be {_none_or(allow_none)}a number, a tensor or a dict of them, got "
                         f"{type(value).__name__}")
    t = torch.as_tensor(value, dtype=torch.float64).detach()
    if finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} must not be nan, got {value!r}")
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value if isinstance(value, torch.Tensor) else float(value)
