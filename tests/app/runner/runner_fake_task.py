"""A tiny task module following the task contract, for the runner tests (imported as ``runner_fake_task``).

Lower ``f(x, y) = 1/2 ||y - A x||^2``, upper ``F(x, y) = 1/2 ||y - b||^2 + 0.01 ||x||^2``; the metrics are made
up from F so that they move during a run. ``summarize`` echoes the options it received (``echo_*``) so that
the tests can see what ``build`` got.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from bilevel.app.tasks.base import TaskRun

OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "dim": (4, int, "size of x and y"),
    "scale": (1.0, float, "scale of the target b"),
    "model": ("linear", str, "linear | mlp"),
    "flag": (False, bool, "a boolean option"),
    "train_size": (None, int, "optional size"),
    "data_root": (None, str, "optional directory"),
}

COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg", "inner_steps": 5, "inner_lr": 0.5, "outer_steps": 6, "outer_lr": 0.1,
    "outer_optimizer": "adam", "log_every": 2, "method_options": {"truncate": 2},
}

#: the last config handed to build (in-process tests)
LAST_CONFIG: Dict[str, Any] = {}


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build the fake run (ValueError for a bad ``model``)."""
    LAST_CONFIG.clear()
    LAST_CONFIG.update(config)
    if config["model"] not in ("linear", "mlp"):
        raise ValueError(f"model must be linear or mlp, got {config['model']!r}")
    dtype = getattr(torch, config["dtype"])
    n = config["dim"]
    g = torch.Generator().manual_seed(config["seed"])
    A = torch.eye(n, dtype=dtype) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64).to(dtype)
    b = config["scale"] * torch.ones(n, dtype=dtype)

    def lower(x, y):
        return 0.5 * ((y - A @ x) ** 2).sum()

    def upper(x, y):
        return 0.5 * ((y - b) ** 2).sum() + 0.01 * (x ** 2).sum()

    def evaluate(loop) -> Dict[str, float]:
        value, _ = loop.evaluate(upper, lower)
        return {"accuracy": 1.0 / (1.0 + value), "f1": 1.0 / (1.0 + 2 * value)}

    def summarize(loop) -> Dict[str, float]:
        value, _ = loop.evaluate(upper, lower)
        return {"test_accuracy": 1.0 / (1.0 + value), "f1": 0.5, "precision": 0.25, "recall": 1.0,
                "echo_dim": float(n), "echo_scale": config["scale"], "echo_flag": float(config["flag"]),
                "echo_threads": float(torch.get_num_threads())}

    return TaskRun(x0=torch.zeros(n, dtype=dtype), y0=torch.zeros(n, dtype=dtype),
                   objectives=lambda t: (upper, lower), evaluate=evaluate, summarize=summarize)
