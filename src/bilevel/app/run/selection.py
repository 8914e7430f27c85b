"""Model selection during a run: keep the state with the best value of one evaluated metric, stop early.

With ``select_metric`` set (an entry of the task's ``evaluate()``, e.g. ``holdout_loss``), every logged
evaluation (step 0 and every ``log_every`` outer steps) is compared with the best one so far
(``select_mode``: ``min`` or ``max``; a strict improvement counts, a non-finite value never does). The run keeps
a copy of the loop and task state at the best evaluation; after ``patience`` evaluations in a row without an
improvement it stops, and the summary is taken at the kept state (``selected_step``), not at the last step.
``outer_steps`` is then the cap of the budget. The kept state travels in the checkpoints, so a resumed run
selects exactly as an uninterrupted one. Cost: one deep copy of the loop and task state per improvement.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Mapping, Optional

#: values of ``select_mode``
MODES = ("min", "max")


class Selection:
    """The best evaluation so far and the early-stopping counter of one run.

    Parameters
    ----------
    metric : str or None
        The ``evaluate()`` entry to select on; None turns selection off (the run takes all its steps and is
        summarized at the last one).
    mode : {"min", "max"}
        Whether smaller or larger values are better.
    patience : int or None
        Stop after this many evaluations in a row without an improvement (>= 1); None: never stop early.

    Attributes
    ----------
    best_value, best_step : float, int or None
        The best evaluation and the outer step it was taken at.
    best_state : dict or None
        Plain-data copy of the loop (and task) state at ``best_step``.
    bad : int
        Evaluations since the last improvement.
    stopped : bool
        True once ``patience`` evaluations in a row brought no improvement.
    """

    def __init__(self, metric: Optional[str] = None, mode: str = "min", patience: Optional[int] = None):
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"select_metric must be the name of an evaluated metric or None, got {metric!r}")
        if mode not in MODES:
            raise ValueError(f"select_mode must be one of {', '.join(MODES)}, got {mode!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be an integer >= 1 (evaluations without improvement) or None, "
                             f"got {patience!r}")
        if patience is not None and metric is None:
            raise ValueError("patience needs select_metric: name the evaluated metric whose lack of improvement "
                             "stops the run (e.g. select_metric: holdout_loss)")
        self.metric, self.mode, self.patience = metric, mode, patience
        self.best_value: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_state: Optional[Dict[str, Any]] = None
        self.bad = 0
        self.stopped = False

    @property
    def enabled(self) -> bool:
        return self.metric is not None

    def improves(self, value: float) -> bool:
        """Whether ``value`` is finite and strictly better than the best so far."""
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def update(self, step: int, metrics: Mapping[str, Any], snapshot: Callable[[], Dict[str, Any]]) -> bool:
        """Take the evaluation at outer step ``step``; ``snapshot()`` is called (and kept) on an improvement.

        Returns
        -------
        bool
            Whether it improved.

        Raises
        ------
        ValueError
            ``metrics`` has no entry ``metric`` (the message lists the entries it has).
        """
        if not self.enabled:
            return False
        if self.metric not in metrics:
            raise ValueError(f"select_metric {self.metric!r} is not among the task's evaluated metrics: "
                             f"{', '.join(sorted(metrics)) or 'none'}")
        value = float(metrics[self.metric])
        if self.improves(value):
            self.best_value, self.best_step, self.best_state = value, int(step), copy.deepcopy(snapshot())
            self.bad = 0
            return True
        self.bad += 1
        if self.patience is not None and self.bad >= self.patience:
            self.stopped = True
        return False

    def summary(self, steps_run: int) -> Dict[str, Any]:
        """What the run's summary records about the selection (empty when it is off)."""
        if not self.enabled:
            return {}
        return {"select_metric": self.metric, "selected_step": self.best_step, "selected_value": self.best_value,
                "stopped_early": self.stopped, "steps_run": int(steps_run)}

    def state_dict(self) -> Dict[str, Any]:
        """Plain data (tensors, numbers, None) for a checkpoint."""
        # no copy: best_state is this object's own copy and is replaced, never changed in place (this runs
        # before every outer step while checkpoints are on)
        return {"best_value": self.best_value, "best_step": self.best_step, "best_state": self.best_state,
                "bad": self.bad, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.best_state = copy.deepcopy(state["best_state"])
        self.bad, self.stopped = int(state["bad"]), bool(state["stopped"])


__all__ = ["Selection", "MODES"]
