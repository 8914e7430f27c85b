"""``runner_fake_task`` made slow for the signal tests (imported as ``runner_slow_task``).

Every call of an objective sleeps ``RUNNER_SLOW_TASK_SLEEP`` seconds (environment variable, default 0), so
that a subprocess can be signalled in the middle of a run. ``RUNNER_SLOW_TASK_SIGNAL_AT="T:SIGNAME"`` makes the
process send itself that signal at the first call of the lower objective of outer step ``T + 1`` (0-based
``t = T``), i.e. in the middle of a step. Neither is part of the configuration: a fast in-process run of the
same configuration gives the reference metrics.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any, Mapping

from runner_fake_task import COMMON_DEFAULTS, OPTIONS  # noqa: F401  (the task contract)
from runner_fake_task import build as _build

from bilevel.app.tasks.base import TaskRun


def _slow(fn: Any, seconds: float) -> Any:
    def objective(x: Any, y: Any) -> Any:
        time.sleep(seconds)
        return fn(x, y)

    return objective


def _signalling(fn: Any, signum: int) -> Any:
    sent = []

    def objective(x: Any, y: Any) -> Any:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return fn(x, y)

    return objective


def build(config: Mapping[str, Any]) -> TaskRun:
    run = _build(config)
    seconds = float(os.environ.get("RUNNER_SLOW_TASK_SLEEP", "0"))
    at, _, name = os.environ.get("RUNNER_SLOW_TASK_SIGNAL_AT", "").partition(":")
    if seconds <= 0 and not at:
        return run

    def objectives(t: int):
        upper, lower = run.objectives(t)
        if seconds > 0:
            upper, lower = _slow(upper, seconds), _slow(lower, seconds)
        if at and t == int(at):
            lower = _signalling(lower, getattr(signal, name))
        return upper, lower

    return replace(run, objectives=objectives)
