"""A small task module for the guard tests of tests/resume (imported as ``resume_guard_task``).

Lower ``f(x, y) = curvature/2 * sum_i d_i (y - A x)_i^2`` (d from 0.5 to 2), upper ``F(x, y) = 1/2 ||y - b||^2 + 0.01 ||x||^2``. Options
break it on purpose from outer step ``break_at`` (1-based) on:

* ``fault="nan"`` -- the lower objective gets a NaN factor, so the inner loop turns non-finite;
* ``fault="explode"`` -- the upper objective is multiplied by 1e9 (divergence);
* ``fault="none"`` -- nothing happens.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from bilevel.app.tasks.base import TaskRun

OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "dim": (4, int, "size of x and y"),
    "fault": ("none", str, "none | nan | explode"),
    "break_at": (5, int, "first outer step (1-based) with the fault"),
    "curvature": (1.0, float, "scale of the lower objective"),
}

COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg", "inner_steps": 10, "inner_lr": 0.5, "outer_steps": 12, "outer_lr": 0.1,
    "outer_optimizer": "adam", "log_every": 2, "method_options": {},
}


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build the run (ValueError for an unknown fault)."""
    if config["fault"] not in ("none", "nan", "explode"):
        raise ValueError(f"fault must be none, nan or explode, got {config['fault']!r}")
    dtype = getattr(torch, config["dtype"])
    n = config["dim"]
    g = torch.Generator().manual_seed(config["seed"])
    A = torch.eye(n, dtype=dtype) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.ones(n, dtype=dtype)
    c = config["curvature"]
    d = torch.linspace(0.5, 2.0, n, dtype=dtype)

    def make(t: int):
        broken = t + 1 >= config["break_at"]
        lower_scale = float("nan") if broken and config["fault"] == "nan" else 1.0
        upper_scale = 1e9 if broken and config["fault"] == "explode" else 1.0

        def lower(x, y):
            return 0.5 * c * lower_scale * (d * (y - A @ x) ** 2).sum()

        def upper(x, y):
            return upper_scale * (0.5 * ((y - b) ** 2).sum() + 0.01 * (x ** 2).sum())

        return upper, lower

    def evaluate(loop) -> Dict[str, float]:
        value, _ = loop.evaluate(*make(0))
        return {"score": 1.0 / (1.0 + value)}

    def summarize(loop) -> Dict[str, float]:
        value, _ = loop.evaluate(*make(0))
        return {"score": 1.0 / (1.0 + value)}

    return TaskRun(x0=torch.zeros(n, dtype=dtype), y0=torch.zeros(n, dtype=dtype), objectives=make,
                   evaluate=evaluate, summarize=summarize)
