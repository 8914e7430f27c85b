"""A task whose evaluated metric has a known minimum along the run (imported as ``runner_selection_task``).

Lower ``f(x, y) = 1/2 (y - x)^2``, upper ``F(x, y) = -y``. With one inner step of size 1 from ``y0 = 0`` the
follower is ``y_1 = x`` exactly, the hypergradient is -1, and plain SGD with ``outer_lr = 1`` gives ``x_t = t``.
``evaluate`` reports ``holdout_loss = (x - target)^2``, smallest at the integer step nearest ``target``;
``summarize`` reports ``x`` itself, so a summary shows which state it was taken at.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from bilevel.app.tasks.base import TaskRun

OPTIONS: Dict[str, Tuple[Any, type, str]] = {"target": (3.3, float, "where holdout_loss is smallest")}

COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg", "inner_steps": 1, "inner_lr": 1.0, "outer_steps": 20, "outer_lr": 1.0,
    "outer_optimizer": "sgd", "log_every": 1, "method_options": {},
}


def build(config: Mapping[str, Any]) -> TaskRun:
    target = float(config["target"])
    dtype = getattr(torch, config["dtype"])

    def lower(x, y):
        return 0.5 * ((y - x) ** 2).sum()

    def upper(x, y):
        return -y.sum()

    def evaluate(loop) -> Dict[str, float]:
        return {"holdout_loss": float((loop.x.sum() - target) ** 2), "x": float(loop.x.sum())}

    def summarize(loop) -> Dict[str, float]:
        return {"x": float(loop.x.sum())}

    return TaskRun(x0=torch.zeros(1, dtype=dtype), y0=torch.zeros(1, dtype=dtype),
                   objectives=lambda t: (upper, lower), evaluate=evaluate, summarize=summarize)
