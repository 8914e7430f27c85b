"""Synthetic problems with known solutions, runnable through the runner (``bilevel run toy``).

* ``problem="bda"`` -- BDA's counter-example (Liu et al., ICML 2020, Eq. 5)::

      min_{x in [-100, 100]} 1/2 (x - [y]_2)^2 + 1/2 ([y]_1 - 1)^2   s.t.  y in argmin_{y in R^2} 1/2 [y]_1^2 - x [y]_1

  solution x* = 1, y* = (1, 1), F* = 0; f*(x) = -x^2 / 2. Objectives from
  :mod:`bilevel.problems.bda_counterexample`. The defaults are the paper's settings (BDA Sec. 5.1): s_l = 0.2
  (``inner_lr``), s_u = 0.7 (``method_options={"upper_lr": 0.7}``, dropped for methods without ``upper_lr``),
  K = 16, alpha_k = 0.5 / k (BDA's default), x0 = 0, y0 = (2, 2); the outer optimizer is not stated in the paper
  (our choice: projected SGD with step 0.5, 200 steps). ``bilevel run toy`` then ends at x = 1.083 (x* = 1).
* ``problem="iaptt"`` -- IAPTT-GM's toy without lower-level convexity (Liu et al., NeurIPS 2021, Eq. 10)::

      min_{x in [1, 10]} x + x y   s.t.  y in argmin_{y in [-2, 2]} -sin(x y)

  unique solution (x*, y*) = (11 pi / 4, -2), F* = -11 pi / 4; f*(x) = -1. Objectives from
  :mod:`bilevel.problems.iaptt_toy`; settings in :mod:`bilevel.app.experiments.synthetic_iaptt` (our choice):
  K = 20, inner_lr = 0.002, Adam with lr 0.3 -- pass them explicitly, :data:`COMMON_DEFAULTS` are those of the
  BDA problem.

The objectives are fixed (``objectives(t)`` ignores t); the task fixes ``x_bounds`` (and ``y_bounds`` for
``iaptt``) through ``loop_options``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import torch

from bilevel import methods as _methods
from bilevel.api import OuterLoop
from bilevel.app.tasks import metrics
from bilevel.app.tasks.base import TaskRun, full_config, task_device
from bilevel.problems import bda_counterexample as _bda, iaptt_toy as _iaptt

PROBLEMS = ("bda", "iaptt")

#: Task options: name -> (default, type, help).
OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "problem": ("bda", str, "bda (BDA Eq. 5) | iaptt (IAPTT-GM Eq. 10)"),
    "x0": (None, float, "initial x (default: 0 for bda, 1 for iaptt)"),
    "y0": (None, str, "initial y, comma-separated: two numbers for bda (default '2,2'), one for iaptt "
                      "(default '2')"),
}

#: This task's defaults for the runner-owned keys (the BDA problem's settings, BDA Sec. 5.1: s_l = 0.2, s_u = 0.7,
#: K = 16; the outer SGD is our choice). ``upper_lr`` applies to the methods that take it (bda, bigsam).
COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "bda",
    "inner_steps": 16,
    "inner_lr": 0.2,
    "outer_steps": 200,
    "outer_lr": 0.5,
    "outer_optimizer": "sgd",
    "log_every": 20,
    "method_options": {"upper_lr": 0.7},
}

_RUNNER_KEYS = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr", "outer_optimizer", "seed",
                "dtype", "method_options", "log_every")

# problem -> (upper, lower, x*, y*, F*, f*(x), default x0, default y0, x bounds, y bounds)
_PROBLEMS: Dict[str, Dict[str, Any]] = {
    "bda": dict(upper=_bda.upper, lower=_bda.lower, x_star=_bda.X_STAR, y_star=_bda.Y_STAR, F_star=_bda.F_STAR,
                f_star=_bda.lower_value, x0=_bda.X0, y0=_bda.Y0, x_bounds=_bda.X_BOUNDS, y_bounds=None),
    "iaptt": dict(upper=_iaptt.upper, lower=_iaptt.lower, x_star=_iaptt.X_STAR, y_star=(_iaptt.Y_STAR,),
                  F_star=_iaptt.F_STAR, f_star=_iaptt.lower_value, x0=_iaptt.INITS[0][0], y0=(_iaptt.INITS[0][1],),
                  x_bounds=_iaptt.X_BOUNDS, y_bounds=_iaptt.Y_BOUNDS),
}


def _parse_y0(value: Any, size: int, problem: str) -> Tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"y0 must be a comma-separated string of {size} number(s), got {value!r}")
    try:
        parts = tuple(float(p) for p in value.split(","))
    except ValueError:
        raise ValueError(f"y0 must be a comma-separated string of {size} number(s), got {value!r}") from None
    if len(parts) != size or not all(math.isfinite(p) for p in parts):
        raise ValueError(f"y0 for problem {problem!r} must be {size} finite number(s), got {value!r}")
    return parts


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build a toy run from a configuration.

    Parameters
    ----------
    config : mapping
        Every key of :data:`OPTIONS` plus the runner keys, and optionally ``device`` (default cpu).

    Returns
    -------
    TaskRun
        ``x0`` of shape (1,), ``y0`` of shape (2,) (bda) or (1,) (iaptt); ``loop_options`` holds the boxes.

    Raises
    ------
    ValueError
        Unknown problem or method, x0 outside the box, malformed y0 (or outside [-2, 2] for iaptt).
    """
    metrics.require(config, tuple(OPTIONS) + _RUNNER_KEYS, "toy")
    name = metrics.check_choice("problem", config["problem"], PROBLEMS)
    p = _PROBLEMS[name]
    dtype = metrics.check_dtype(config["dtype"])
    device = task_device(config)
    metrics.check_seed(config["seed"])
    _methods.get(config["method"])
    lo, hi = p["x_bounds"]
    x0 = p["x0"] if config["x0"] is None else metrics.check_real("x0", config["x0"], lo, hi)
    y0 = p["y0"] if config["y0"] is None else _parse_y0(config["y0"], len(p["y0"]), name)
    if p["y_bounds"] is not None and not all(p["y_bounds"][0] <= v <= p["y_bounds"][1] for v in y0):
        raise ValueError(f"y0 for problem {name!r} must lie in {list(p['y_bounds'])}, got {list(y0)}")
    upper, lower = p["upper"], p["lower"]
    loop_options: Dict[str, Any] = {"x_bounds": p["x_bounds"]}
    if p["y_bounds"] is not None:
        loop_options["y_bounds"] = p["y_bounds"]

    def state(loop: OuterLoop) -> Dict[str, float]:
        value, y = loop.evaluate(upper, lower)
        x = loop.x
        with torch.no_grad():
            f = float(lower(x, y))
        xv = float(x[0])
        out = {"x": xv, "distance_to_solution": abs(xv - p["x_star"]), "upper_gap": abs(value - p["F_star"]),
               "lower_gap": abs(f - p["f_star"](xv)), "upper": value}
        for i, v in enumerate(y.tolist()):
            out[f"y_{i + 1}"] = float(v)
        return out

    def summarize(loop: OuterLoop) -> Dict[str, float]:
        s = state(loop)
        out = {"x_final": s.pop("x"), "x_star": float(p["x_star"])}
        out.update({(k + "_final" if k.startswith("y_") else k): v for k, v in s.items()})
        y_star = torch.tensor(p["y_star"], dtype=torch.float64)
        y = torch.tensor([out[f"y_{i + 1}_final"] for i in range(len(p["y_star"]))], dtype=torch.float64)
        out["y_distance_to_solution"] = float(torch.linalg.vector_norm(y - y_star))
        return out

    return TaskRun(x0=torch.tensor([x0], dtype=dtype, device=device), y0=torch.tensor(y0, dtype=dtype, device=device),
                   objectives=lambda t: (upper, lower), evaluate=state, summarize=summarize,
                   loop_options=loop_options)


def config_with_defaults(**overrides: Any) -> Dict[str, Any]:
    """A full config (:data:`OPTIONS`, :data:`COMMON_DEFAULTS`, ``seed=0``, ``dtype="float64"``) with
    ``overrides`` applied (for scripts and tests).

    As in the runner, the default ``method_options`` keep only the options the chosen method takes (``upper_lr``
    is dropped for ``rhg``); ``method_options`` given in ``overrides`` are used as they are.
    """
    cfg = full_config("toy", OPTIONS, COMMON_DEFAULTS, overrides, dtype="float64")
    if "method_options" not in overrides:
        allowed = _methods.get(cfg["method"]).options if cfg["method"] in _methods.METHODS else ()
        cfg["method_options"] = {k: v for k, v in cfg["method_options"].items() if k in allowed}
    return cfg
