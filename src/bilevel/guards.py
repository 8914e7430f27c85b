"""Numerical guards of long runs: divergence detection, diagnostics warnings and bf16 autocast.

:class:`Guards` looks at every outer step's record (from :meth:`bilevel.OuterLoop.step`):

* **divergence** -- a non-finite ``upper`` / ``grad_norm``, or ``|upper| > divergence_factor * max(|F_1|, 1)``
  (``F_1`` the upper objective of the first step) raises :class:`DivergenceError` naming the method, the
  outer step and the last finite values. A :class:`bilevel.errors.NonFiniteError` of the core (whose message
  names the inner step, "at inner step k of K") is turned into the same error by the runner.
* **warnings** (never fatal): BVFIM barrier trouble (``backtracks`` per y-step at or above ``backtrack_warn``,
  or a non-positive ``gap``), linear-solver non-convergence (``solver_converged`` False, with
  ``solver_residual``), inner loops far from stationarity (``lower_grad_norm_last / lower_grad_norm_first`` above
  ``stationarity_ratio``), and ``RuntimeWarning`` s the core emitted during the step. They are logged (logger
  ``bilevel.runner``; the first occurrence of each kind, then every ``LOG_REPEAT`` th) and collected for the
  ``warnings`` field of the next metrics line.

:func:`autocast_objectives` wraps a task's objectives for ``precision="bf16"``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

#: exit status of ``bilevel run`` when a run stops on NaN/inf or divergence
EXIT_DIVERGED = 3

#: precisions of ``--precision``
PRECISIONS: Tuple[str, ...] = ("fp32", "bf16")

#: a warning of one kind is logged at its 1st, (1 + LOG_REPEAT)th, ... occurrence (all go to metrics.jsonl)
LOG_REPEAT = 100

logger = logging.getLogger("bilevel.runner")


class DivergenceError(RuntimeError):
    """A run stopped on NaN/inf or an exploding upper objective.

    Attributes
    ----------
    method : str
        The method of the run.
    step : int
        The outer step (1-based) that failed.
    last_good : dict
        The last finite ``upper`` and ``grad_norm`` (and the step they belong to), empty before the first step.
    """

    def __init__(self, message: str, *, method: str, step: int, last_good: Mapping[str, Any]):
        super().__init__(message)
        self.method = method
        self.step = step
        self.last_good = dict(last_good)


@dataclass
class GuardOptions:
    """Thresholds of :class:`Guards` (the ``bilevel run`` flags of the same names).

    Attributes
    ----------
    divergence_factor : float
        Stop when ``|upper| > divergence_factor * max(|F_1|, 1)``; 0 turns this check off (non-finite values
        always stop the run).
    stationarity_ratio : float
        Warn when ``lower_grad_norm_last / lower_grad_norm_first`` exceeds it; 0 turns the check off.
    backtrack_warn : float
        Warn when BVFIM's ``backtracks / y_steps`` reaches it; 0 turns the check off.
    """

    divergence_factor: float = 1e6
    stationarity_ratio: float = 0.5
    backtrack_warn: float = 1.0

    def __post_init__(self) -> None:
        for name in ("divergence_factor", "stationarity_ratio", "backtrack_warn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"bad value {value!r} for {name}: expected a finite number >= 0 (0 = off)")
            setattr(self, name, float(value))

    def as_dict(self) -> Dict[str, float]:
        """The options as a plain dict."""
        return asdict(self)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return "nan/inf" if not _finite(value) else f"{float(value):.6g}"


class Guards:
    """Per-step checks of a run (see the module docstring); its state goes into the checkpoints.

    Parameters
    ----------
    method : str
        The run's method (named in messages).
    options : GuardOptions
    log : callable, optional
        ``log(message)`` for warnings; default ``logger.warning``.
    """

    def __init__(self, method: str, options: GuardOptions, log: Optional[Callable[[str], None]] = None):
        self.method = method
        self.options = options
        self.log = log if log is not None else logger.warning
        self.reference: Optional[float] = None   # |F| of the first step
        self.last_good: Dict[str, Any] = {}       # step, upper, grad_norm of the last good step
        self.pending: Dict[str, List[Any]] = {}   # kind -> [count, last message] since the last metrics line
        self.counts: Dict[str, int] = {}          # kind -> occurrences in the whole run

    # -- divergence ------------------------------------------------------------------------------------
    def _last_good_text(self) -> str:
        if not self.last_good:
            return "no finite step before it"
        g = self.last_good
        return f"last finite values (outer step {g['step']}): upper={_num(g['upper'])}, grad_norm={_num(g['grad_norm'])}"

    def nonfinite(self, step: int, total: int, err: BaseException) -> DivergenceError:
        """The error for a core :class:`~bilevel.errors.NonFiniteError` raised during outer step ``step``.

        Parameters
        ----------
        step : int
            1-based outer step.
        total : int
            Number of outer steps of the run.
        err : Exception
            The core's error (its message names the inner step).

        Returns
        -------
        DivergenceError
        """
        return DivergenceError(f"method {self.method!r} hit nan/inf at outer step {step} of {total}: {err}; "
                               f"{self._last_good_text()}", method=self.method, step=step,
                               last_good=self.last_good)

    def check(self, step: int, total: int, record: Mapping[str, Any]) -> None:
        """Raise :class:`DivergenceError` when the step's record is non-finite or exploding.

        Parameters
        ----------
        step : int
            1-based outer step the record belongs to.
        total : int
            Number of outer steps of the run.
        record : mapping
            ``upper``, ``grad_norm`` (floats) of the step.
        """
        upper, gnorm = record.get("upper"), record.get("grad_norm")
        upper = float(upper) if isinstance(upper, (int, float, torch.Tensor)) else upper
        gnorm = float(gnorm) if isinstance(gnorm, (int, float, torch.Tensor)) else gnorm
        bad = None
        if not _finite(upper) or not _finite(gnorm):
            bad = f"non-finite values (upper={_num(upper)}, grad_norm={_num(gnorm)})"
        elif self.options.divergence_factor > 0:
            if self.reference is None:
                self.reference = abs(upper)
            limit = self.options.divergence_factor * max(self.reference, 1.0)
            if abs(upper) > limit:
                bad = (f"the upper objective diverged: |upper| = {abs(upper):.6g} > divergence_factor "
                       f"{self.options.divergence_factor:g} x max(|F_1|, 1) = {limit:.6g} (grad_norm={_num(gnorm)})")
        if bad is not None:
            raise DivergenceError(f"method {self.method!r} stopped at outer step {step} of {total}: {bad}; "
                                  f"{self._last_good_text()}", method=self.method, step=step,
                                  last_good=self.last_good)
        self.last_good = {"step": step, "upper": upper, "grad_norm": gnorm}

    # -- warnings --------------------------------------------------------------------------------------
    def diagnose(self, step: int, record: Mapping[str, Any], caught: Optional[List[str]] = None) -> List[str]:
        """Collect the warnings of one step (logged and kept for the next metrics line).

        Parameters
        ----------
        step : int
            1-based outer step.
        record : mapping
            The step's record (method diagnostics included).
        caught : list of str, optional
            Messages of the ``RuntimeWarning`` s the core emitted during the step.

        Returns
        -------
        list of str
            The step's warning messages.
        """
        o = self.options
        found: List[Tuple[str, str]] = []
        if "backtracks" in record and o.backtrack_warn > 0:
            ysteps = record.get("y_steps") or 1
            per = float(record["backtracks"]) / float(ysteps)
            if per >= o.backtrack_warn:
                found.append(("barrier", f"{self.method}: barrier step halved {int(record['backtracks'])} times in "
                                         f"{int(ysteps)} y-steps at outer step {step} (y pressed against the "
                                         "barrier: the lower-level constraint is nearly infeasible)"))
        gap = record.get("gap")
        if "backtracks" in record and isinstance(gap, (int, float)) and not (_finite(gap) and gap > 0):
            found.append(("barrier", f"{self.method}: barrier infeasible at outer step {step}: gap "
                                     f"f*_mu - f(x, y) = {_num(gap)} is not positive"))
        if record.get("solver_converged") is False:
            res = record.get("solver_residual")
            found.append(("solver", f"{self.method}: linear solver did not converge at outer step {step} "
                                    f"(relative residual {_num(res) if res is not None else 'unknown'})"))
        first, last = record.get("lower_grad_norm_first"), record.get("lower_grad_norm_last")
        if o.stationarity_ratio > 0 and _finite(first) and _finite(last) and first > 0:
            ratio = float(last) / float(first)
            if ratio > o.stationarity_ratio:
                found.append(("stationarity", f"{self.method}: inner loop far from stationarity at outer step "
                                              f"{step}: ||grad_y f|| last/first = {ratio:.3g} > "
                                              f"{o.stationarity_ratio:g} (raise inner_steps or inner_lr)"))
        solver_seen = any(kind == "solver" for kind, _ in found)
        for text in caught or ():
            if solver_seen and text.startswith(("cg did not converge", "cg:")):
                continue
            found.append(("core", f"{self.method}: outer step {step}: {text}"))
        for kind, message in found:
            n = self.counts.get(kind, 0) + 1
            self.counts[kind] = n
            if n == 1 or (n - 1) % LOG_REPEAT == 0:
                self.log(message + (f" [occurrence {n}]" if n > 1 else ""))
            entry = self.pending.setdefault(kind, [0, ""])
            entry[0] += 1
            entry[1] = message
        return [m for _, m in found]

    def flush(self) -> List[str]:
        """The ``warnings`` field of a metrics line: one entry per kind since the previous line (then reset).

        Returns
        -------
        list of str
            ``"<last message> (n steps since the previous line)"`` per kind; empty when all was well.
        """
        out = [msg if n == 1 else f"{msg} ({n} steps since the previous line)" for n, msg in self.pending.values()]
        self.pending = {}
        return out

    def summary(self) -> Dict[str, int]:
        """Occurrences per kind over the whole run (``barrier``, ``solver``, ``stationarity``, ``core``)."""
        return dict(self.counts)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The guards' state (reference magnitude, last good values, pending warnings, counts)."""
        return {"reference": self.reference, "last_good": dict(self.last_good),
                "pending": {k: list(v) for k, v in self.pending.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.reference = state.get("reference")
        self.last_good = dict(state.get("last_good") or {})
        self.pending = {k: list(v) for k, v in (state.get("pending") or {}).items()}
        self.counts = dict(state.get("counts") or {})


# ------------------------------------------------------------------------------------------ precision
def autocast_objective(fn: Callable[[Any, Any], torch.Tensor], dtype: torch.dtype = torch.float32
                       ) -> Callable[[Any, Any], torch.Tensor]:
    """Run ``fn(x, y)`` under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and return a ``dtype`` scalar.

    Parameters
    ----------
    fn : callable
        An objective ``f(x, y) -> scalar tensor``.
    dtype : torch.dtype
        Dtype of the returned value (float32: the hypergradient is accumulated in float32).

    Returns
    -------
    callable
    """
    def wrapped(x: Any, y: Any) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = fn(x, y)
        return value.to(dtype)

    wrapped.__name__ = getattr(fn, "__name__", "objective") + "_bf16"
    wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapped


def autocast_objectives(pair: Tuple[Callable, Callable], precision: str) -> Tuple[Callable, Callable]:
    """The ``(upper, lower)`` of ``TaskRun.objectives(t)`` for a precision (unchanged for ``fp32``).

    Parameters
    ----------
    pair : (callable, callable)
    precision : {"fp32", "bf16"}

    Returns
    -------
    (callable, callable)
    """
    if precision == "fp32":
        return pair
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    upper, lower = pair
    return autocast_objective(upper), autocast_objective(lower)


__all__ = ["EXIT_DIVERGED", "PRECISIONS", "DivergenceError", "GuardOptions", "Guards", "autocast_objective",
           "autocast_objectives"]
