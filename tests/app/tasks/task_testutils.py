"""Helpers shared by the task tests (a uniquely named module, not a conftest)."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from bilevel.api import OuterLoop
from bilevel.app.tasks.base import TaskRun


def make_loop(run: TaskRun, cfg: Mapping[str, Any]) -> OuterLoop:
    """The OuterLoop the runner would build for ``run`` and ``cfg``."""
    return OuterLoop(run.x0, run.y0, method=cfg["method"], outer_lr=cfg["outer_lr"],
                     outer_optimizer=cfg["outer_optimizer"], inner_steps=cfg["inner_steps"],
                     inner_lr=cfg["inner_lr"], **dict(cfg["method_options"]), **run.loop_options)


def run_steps(run: TaskRun, cfg: Mapping[str, Any], steps: int) -> OuterLoop:
    """``steps`` outer steps on ``run.objectives(t)``; returns the loop."""
    loop = make_loop(run, cfg)
    for t in range(steps):
        upper, lower = run.objectives(t)
        loop.step(upper, lower)
    return loop


def check_fractions(d: Dict[str, float], keys) -> None:
    """Every key present, a float, and in [0, 1]."""
    for k in keys:
        assert k in d, k
        v = d[k]
        assert isinstance(v, float), (k, type(v))
        assert 0.0 <= v <= 1.0, (k, v)
