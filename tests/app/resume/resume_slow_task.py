"""A task that can hold a run open, for the lock tests of tests/resume (imported as ``resume_slow_task``).

The problem is the fake one of tests/runner (lower ``1/2 ||y - A x||^2``, upper ``1/2 ||y - b||^2 +
0.01 ||x||^2``). With ``gate`` set, outer step ``pause_at`` (1-based) waits until the file ``gate`` exists
(at most ``gate_timeout`` seconds, then it fails): a test can keep a run in progress, holding its directory,
for as long as it needs, then let it finish by creating the file.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch

from bilevel.app.tasks.base import TaskRun

OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "dim": (4, int, "size of x and y"),
    "gate": (None, str, "file whose existence outer step pause_at waits for (none: no waiting)"),
    "pause_at": (3, int, "1-based outer step that waits for the gate file"),
    "gate_timeout": (120.0, float, "seconds to wait for the gate file before failing"),
}

COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg", "inner_steps": 5, "inner_lr": 0.5, "outer_steps": 8, "outer_lr": 0.1,
    "outer_optimizer": "adam", "log_every": 1, "method_options": {},
}


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build the run."""
    dtype = getattr(torch, config["dtype"])
    n = config["dim"]
    g = torch.Generator().manual_seed(config["seed"])
    A = torch.eye(n, dtype=dtype) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.ones(n, dtype=dtype)

    def lower(x, y):
        return 0.5 * ((y - A @ x) ** 2).sum()

    def upper(x, y):
        return 0.5 * ((y - b) ** 2).sum() + 0.01 * (x ** 2).sum()

    def objectives(t: int):
        if config["gate"] is not None and t + 1 == config["pause_at"]:
            deadline = time.monotonic() + config["gate_timeout"]
            while not Path(config["gate"]).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gate file {config['gate']} did not appear")
                time.sleep(0.02)
        return upper, lower

    def evaluate(loop) -> Dict[str, float]:
        value, _ = loop.evaluate(upper, lower)
        return {"score": 1.0 / (1.0 + value)}

    return TaskRun(x0=torch.zeros(n, dtype=dtype), y0=torch.zeros(n, dtype=dtype), objectives=objectives,
                   evaluate=evaluate, summarize=evaluate)
