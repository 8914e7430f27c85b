"""Metrics shared by the tasks, and the small configuration checks every task's ``build`` uses.

Metrics work on tensors or numpy arrays and return plain Python floats, so they can go straight into the
runner's JSON logs.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["accuracy", "precision_recall_f1", "mean_ci95", "require", "check_choice", "check_int",
           "check_real", "check_dtype", "check_seed"]


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def accuracy(logits: Any, labels: Any) -> float:
    """Fraction of rows whose arg-max matches the label.

    Parameters
    ----------
    logits : Tensor or numpy.ndarray
        ``(..., C)`` scores.
    labels : Tensor or numpy.ndarray
        ``(...)`` integer labels.

    Returns
    -------
    float
        Accuracy in [0, 1] (0 for empty input).
    """
    pred = _numpy(logits).argmax(-1)
    lab = _numpy(labels)
    if pred.shape != lab.shape:
        raise ValueError(f"logits {tuple(_numpy(logits).shape)} and labels {tuple(lab.shape)} do not match")
    return float((pred == lab).mean()) if lab.size else 0.0


def precision_recall_f1(flagged: Any, truth: Any) -> dict:
    """Precision, recall and F1 of a binary detection (positive class = True).

    ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 P R / (P + R)``; a ratio whose
    denominator is zero is 0 (as scikit-learn's ``zero_division=0``).

    Parameters
    ----------
    flagged : array-like of bool
        Predicted positives (e.g. samples flagged as corrupted).
    truth : array-like of bool
        True positives mask (e.g. the corrupted samples).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (floats in [0, 1]), ``tp``, ``fp``, ``fn`` (counts as floats).
    """
    f = _numpy(flagged).astype(bool).ravel()
    t = _numpy(truth).astype(bool).ravel()
    if f.shape != t.shape:
        raise ValueError(f"flagged ({f.size}) and truth ({t.size}) must have the same number of entries")
    tp = int(np.sum(f & t))
    fp = int(np.sum(f & ~t))
    fn = int(np.sum(~f & t))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "tp": float(tp),
            "fp": float(fp), "fn": float(fn)}


def mean_ci95(values: Any) -> tuple:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(n)`` (population std, ``ddof=0``).

    Parameters
    ----------
    values : array-like of float
        Per-episode values (n >= 1).

    Returns
    -------
    (float, float)
        ``(mean, half_width)``; the half-width is 0 for a single value.
    """
    v = _numpy(values).astype(np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


# ------------------------------------------------------------------------------------------ config checks
def require(config: Mapping[str, Any], keys: Sequence[str], task: str) -> None:
    """Raise ValueError naming the missing keys of ``config``."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{task}: config must be a mapping, got {type(config).__name__}")
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{task}: config is missing key(s) {', '.join(missing)}")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` normalized (lower case, ``_`` -> ``-``) if it is one of ``allowed``."""
    key = value.lower().replace("_", "-") if isinstance(value, str) else value
    if key not in allowed:
        raise ValueError(f"{name} must be one of {' | '.join(allowed)}, got {value!r}")
    return key


def check_int(name: str, value: Any, low: int, high: Any = None, allow_none: bool = False) -> Any:
    """An integer in ``[low, high]`` (``high`` None: unbounded); None passes through with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value)


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
               low_open: bool = False, allow_none: bool = False) -> Any:
    """A finite real in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < low or v > high or (low_open and v == low):
        lo = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {lo}{low:g}, {high:g}], got {v:g}")
    return v


def check_dtype(value: Any) -> torch.dtype:
    """``"float32"`` / ``"float64"`` -> the torch dtype."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if value not in table:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {value!r}")
    return table[value]


def check_seed(value: Any) -> int:
    """A non-negative integer seed."""
    return check_int("seed", value, 0)
