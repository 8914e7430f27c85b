"""Numerical guards of long runs: divergence detection, diagnostics warnings and bf16 autocast.

:class:`Guards` looks at every outer step's record (from :meth:`bilevel.OuterLoop.step`):

* **divergence** -- a non-finite ``upper`` / ``grad_norm``, a diverging inner loop, or
  ``|upper| > divergence_factor * max(|F_0|, 1)`` raises :class:`DivergenceError` naming the method, the
  outer step and the last finite values. ``F_0`` (and ``f_0``) are the objectives at ``(x0, y0)`` before any
  step (:meth:`Guards.set_reference`, called by the runner), so a run that diverges from its first step is
  caught too; without them the first step's ``|upper|`` is the reference. The inner loop diverged when it
  raised the lower objective:
  ``f(x, y_K) - f(x, y_start) > inner_divergence_factor * max(|f(x, y_start)|, 1)``; ``f(x, y_start)`` is only
  evaluated (through the ``lower_start`` callable of :meth:`Guards.check`) when the step looks suspicious: the
  core flagged it (``inner_diverged`` True in the record), its ``||grad_y f||`` grew during the inner loop
  (``lower_grad_norm_last > lower_grad_norm_first``, or non-finite) or
  ``f(x, y_K) - f_0 > inner_divergence_factor * max(|f_0|, 1)``. A :class:`bilevel.errors.NonFiniteError`
  of the core (whose message names the inner step, "at inner step k of K") is turned into the same error by
  the runner.
* **warnings** (never fatal): BVFIM barrier trouble (``backtracks`` per y-step at or above ``backtrack_warn``,
  or a non-positive ``gap``), linear-solver non-convergence (``solver_converged`` False, with
  ``solver_residual``), inner loops far from stationarity (``lower_grad_norm_last / lower_grad_norm_first`` above
  ``stationarity_ratio``: "raise inner_steps or inner_lr" below 1, "lower inner_lr" above 1, where the gradient
  grew), and ``RuntimeWarning`` s the core emitted during the step. They are logged (logger
  ``bilevel.app.run.runner``; the first occurrence of each kind, then every ``LOG_REPEAT`` th) and collected for the
  ``warnings`` field of the next metrics line.

:func:`guarded_step` takes one outer step under the guards (the runner's step). :func:`autocast_objectives` wraps
a task's objectives for ``precision="bf16"``. :class:`StopSignals` turns
SIGINT / SIGTERM into :class:`RunInterrupted` at a point where the runner can save the last completed step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from bilevel.app.run.checkpoint import rng_untouched
from bilevel.errors import NonFiniteError
from bilevel.parallel import reduce_record

#: exit status of ``bilevel run`` when a run stops on NaN/inf or divergence
EXIT_DIVERGED = 3

#: precisions of ``--precision``
PRECISIONS: Tuple[str, ...] = ("fp32", "bf16")

#: a warning of one kind is logged at its 1st, (1 + LOG_REPEAT)th, ... occurrence (all go to metrics.jsonl)
LOG_REPEAT = 100

logger = logging.getLogger("bilevel.app.run.runner")


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
        Stop when ``|upper| > divergence_factor * max(|F_0|, 1)`` (``F_0``: the upper objective at ``(x0, y0)``,
        before any step); 0 turns this check off (non-finite values always stop the run).
    inner_divergence_factor : float
        Stop when an inner loop raised the lower objective by more than this factor times
        ``max(|f at its start|, 1)``; 0 turns this check off.
    stationarity_ratio : float
        Warn when ``lower_grad_norm_last / lower_grad_norm_first`` exceeds it; 0 turns the check off.
    backtrack_warn : float
        Warn when BVFIM's ``backtracks / y_steps`` reaches it; 0 turns the check off.
    """

    divergence_factor: float = 1e6
    stationarity_ratio: float = 0.5
    backtrack_warn: float = 1.0
    inner_divergence_factor: float = 1e3

    def __post_init__(self) -> None:
        for name in ("divergence_factor", "stationarity_ratio", "backtrack_warn", "inner_divergence_factor"):
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


def _number(value: Any) -> Any:
    """A float for numbers and one-element tensors; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _num(value: Any) -> str:
    return "nan/inf" if not _finite(value) else f"{float(value):.6g}"


def _step_warnings(method: str, options: GuardOptions, step: int, record: Mapping[str, Any],
                   caught: Optional[List[str]]) -> List[Tuple[str, str]]:
    """``(kind, message)`` for every warning rule of :meth:`Guards.diagnose` that one step's record breaks."""
    o = options
    found: List[Tuple[str, str]] = []
    if "backtracks" in record and o.backtrack_warn > 0:
        ysteps = record.get("y_steps") or 1
        per = float(record["backtracks"]) / float(ysteps)
        if per >= o.backtrack_warn:
            found.append(("barrier", f"{method}: barrier step halved {int(record['backtracks'])} times in "
                                     f"{int(ysteps)} y-steps at outer step {step} (y pressed against the "
                                     "barrier: the lower-level constraint is nearly infeasible)"))
    gap = record.get("gap")
    if "backtracks" in record and isinstance(gap, (int, float)) and not (_finite(gap) and gap > 0):
        found.append(("barrier", f"{method}: barrier infeasible at outer step {step}: gap "
                                 f"f*_mu - f(x, y) = {_num(gap)} is not positive"))
    if record.get("solver_converged") is False:
        res = record.get("solver_residual")
        found.append(("solver", f"{method}: linear solver did not converge at outer step {step} "
                                f"(relative residual {_num(res) if res is not None else 'unknown'})"))
    first, last = record.get("lower_grad_norm_first"), record.get("lower_grad_norm_last")
    if o.stationarity_ratio > 0 and _finite(first) and _finite(last) and first > 0:
        ratio = float(last) / float(first)
        if ratio > o.stationarity_ratio and ratio > 1.0:  # the gradient grew: steps too large
            found.append(("stationarity", f"{method}: inner loop diverging or oscillating at outer step "
                                          f"{step}: ||grad_y f|| grew, last/first = {ratio:.3g} > 1 "
                                          "(lower inner_lr)"))
        elif ratio > o.stationarity_ratio:  # it shrank, but too little: too few or too small steps
            found.append(("stationarity", f"{method}: inner loop far from stationarity at outer step "
                                          f"{step}: ||grad_y f|| last/first = {ratio:.3g} > "
                                          f"{o.stationarity_ratio:g} (raise inner_steps or inner_lr)"))
    solver_seen = any(kind == "solver" for kind, _ in found)
    for text in caught or ():
        if solver_seen and text.startswith(("cg did not converge", "cg:")):
            continue
        found.append(("core", f"{method}: outer step {step}: {text}"))
    return found


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
        self.reference: Optional[float] = None   # |F_0| (at x0, y0; else |F| of the first step)
        self.lower_reference: Optional[float] = None  # f_0 = f(x0, y0)
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

    def set_reference(self, upper: Any, lower: Any = None) -> None:
        """Take ``F_0 = F(x0, y0)`` (and ``f_0 = f(x0, y0)``), computed before any step, as the references.

        Non-finite values are ignored (then the first step's ``|upper|`` is the reference of the magnitude
        check, as without this call).

        Parameters
        ----------
        upper : float
        lower : float, optional
        """
        upper, lower = _number(upper), _number(lower)
        if _finite(upper):
            self.reference = abs(upper)
        if _finite(lower):
            self.lower_reference = lower

    def _inner_diverged(self, record: Mapping[str, Any], lower_start: Optional[Callable[[], Any]]) -> Optional[str]:
        """Why the step's inner loop diverged, or None (see the module docstring)."""
        factor = self.options.inner_divergence_factor
        if factor <= 0:
            return None
        first, last = _number(record.get("lower_grad_norm_first")), _number(record.get("lower_grad_norm_last"))
        lower = _number(record.get("lower"))
        if not _finite(lower):
            return None
        # the core's flag (gradient grew 10x and f rose at all) is only a suspicion: it also fires on healthy
        # BDA steps, whose aggregated inner loop may leave the lower optimum
        grads, suspect = "", record.get("inner_diverged") is True
        if isinstance(last, float) and not _finite(last):
            suspect, grads = True, f"; ||grad_y f|| at its last step = {_num(last)}"
        elif _finite(first) and _finite(last) and last > first:
            suspect = True
            if first > 0:
                grads = f"; ||grad_y f|| grew from {first:.3g} to {last:.3g}"
        ref = self.lower_reference
        far = ref is not None and lower - ref > factor * max(abs(ref), 1.0)
        if not (suspect or far):
            return None
        if lower_start is None:  # nothing to confirm with: the reference test alone decides
            if far:
                return (f"the inner loop diverged: f(x, y_K) = {lower:.6g} exceeds f_0 = f(x0, y0) = {ref:.6g} by "
                        f"more than inner_divergence_factor {factor:g} x max(|f_0|, 1){grads} (lower inner_lr)")
            return None
        start = _number(lower_start())
        if _finite(start) and lower - start > factor * max(abs(start), 1.0):
            return (f"the inner loop diverged: it raised the lower objective from f(x, y_start) = {start:.6g} to "
                    f"f(x, y_K) = {lower:.6g}, by more than inner_divergence_factor {factor:g} x "
                    f"max(|f(x, y_start)|, 1){grads} (lower inner_lr)")
        return None

    def check(self, step: int, total: int, record: Mapping[str, Any],
              lower_start: Optional[Callable[[], Any]] = None) -> None:
        """Raise :class:`DivergenceError` when the step's record is non-finite or exploding.

        Parameters
        ----------
        step : int
            1-based outer step the record belongs to.
        total : int
            Number of outer steps of the run.
        record : mapping
            ``upper``, ``grad_norm`` (floats) of the step; ``lower``, ``lower_grad_norm_first`` /
            ``lower_grad_norm_last`` and ``inner_diverged`` when present.
        lower_start : callable, optional
            ``lower_start() -> f(x, y_start)``: the lower objective where the step's inner loop started (same
            x). Called only when the step looks suspicious; without it the inner loop counts as diverged when
            ``f(x, y_K) - f_0 > inner_divergence_factor * max(|f_0|, 1)``.
        """
        upper, gnorm = record.get("upper"), record.get("grad_norm")
        upper = float(upper) if isinstance(upper, (int, float, torch.Tensor)) else upper
        gnorm = float(gnorm) if isinstance(gnorm, (int, float, torch.Tensor)) else gnorm
        bad = None
        if not _finite(upper) or not _finite(gnorm):
            bad = f"non-finite values (upper={_num(upper)}, grad_norm={_num(gnorm)})"
        else:
            bad = self._inner_diverged(record, lower_start)
        if bad is None and self.options.divergence_factor > 0:
            if self.reference is None:
                self.reference = abs(upper)
            limit = self.options.divergence_factor * max(self.reference, 1.0)
            if abs(upper) > limit:
                bad = (f"the upper objective diverged: |upper| = {abs(upper):.6g} > divergence_factor "
                       f"{self.options.divergence_factor:g} x max(|F_0|, 1) = {limit:.6g} (grad_norm={_num(gnorm)})")
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
        found = _step_warnings(self.method, self.options, step, record, caught)
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
        """The guards' state (reference values, last good values, pending warnings, counts)."""
        return {"reference": self.reference, "lower_reference": self.lower_reference,
                "last_good": dict(self.last_good),
                "pending": {k: list(v) for k, v in self.pending.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.reference = state.get("reference")
        self.lower_reference = state.get("lower_reference")
        self.last_good = dict(state.get("last_good") or {})
        self.pending = {k: list(v) for k, v in (state.get("pending") or {}).items()}
        self.counts = dict(state.get("counts") or {})


# ------------------------------------------------------------------------------------------ a guarded step
def guarded_step(guards: Guards, loop: Any, upper: Callable[[Any, Any], Any], lower: Callable[[Any, Any], Any],
                 step: int, total: int) -> Tuple[Dict[str, Any], List[str]]:
    """Take outer step ``step`` of ``total`` (1-based) of ``loop`` on these objectives, under the guards.

    Before the first step the guards' references ``F_0``, ``f_0`` are taken at ``(x0, y0)``
    (:meth:`Guards.set_reference`). The core's ``RuntimeWarning`` s raised during the step are caught for
    :meth:`Guards.diagnose` (other warnings are passed on); its :class:`~bilevel.errors.NonFiniteError` becomes
    :meth:`Guards.nonfinite`'s error; then :meth:`Guards.check` looks at the record (evaluating
    ``f(x, y_start)`` only when the step looks suspicious). Costs one ``loop.step`` plus, at most, two
    evaluations of the objectives.

    Parameters
    ----------
    guards : Guards
    loop : bilevel.OuterLoop
    upper, lower : callable
        The step's objectives.
    step, total : int

    Returns
    -------
    (dict, list of str)
        The step's record and the messages of the core's RuntimeWarnings.

    Raises
    ------
    DivergenceError
    """
    x_start, y_start = loop.x, loop.y0  # where this step's inner loop starts (copies)
    if step == 1 and guards.reference is None:  # F_0, f_0 at (x0, y0): the guards' references
        ref = objective_values({"upper": upper, "lower": lower}, x_start, y_start, loop)
        guards.set_reference(ref["upper"], ref["lower"])

    def lower_start() -> float:  # f(x, y_start), asked for by the guards when the step looks suspicious
        return objective_values({"lower": lower}, x_start, y_start, loop)["lower"]

    with warnings.catch_warnings(record=True) as caught:  # the core's RuntimeWarnings go to the guards
        warnings.simplefilter("always", RuntimeWarning)
        try:
            record = loop.step(upper, lower)
        except NonFiniteError as err:
            raise guards.nonfinite(step, total, err) from err
    core: List[str] = []
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            core.append(str(w.message))
        else:  # not ours to judge: pass it on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    guards.check(step, total, record, lower_start=lower_start)
    return record, core


def objective_values(objectives: Mapping[str, Callable[[Any, Any], Any]], x: Any, y: Any,
                     loop: Any = None) -> Dict[str, float]:
    """``{name: float(fn(x, y))}`` without gradients, leaving the random streams as they were.

    The guards' references ``F_0``, ``f_0`` and the ``lower_start`` of :meth:`Guards.check`. In a task-parallel
    distributed run (``loop`` a :class:`bilevel.parallel.DistributedOuterLoop` with ``data_parallel`` False) the
    values are summed over the ranks, like the ``upper`` / ``lower`` of the step records (every rank must call
    this together). Costs one evaluation of each objective (and one all-reduce).
    """
    with torch.no_grad(), rng_untouched():
        values = {name: float(fn(x, y)) for name, fn in objectives.items()}
    ctx = getattr(loop, "ctx", None)
    if ctx is not None and getattr(loop, "data_parallel", True) is False:
        values = reduce_record(values, ctx)  # sums "upper" and "lower" over the ranks
    return values


# ------------------------------------------------------------------------------------------ precision
def check_precision(precision: str, dtype: str) -> str:
    """``precision`` checked against :data:`PRECISIONS` and the run's ``dtype`` (bf16 needs float32).

    Raises
    ------
    ValueError
    """
    if precision not in PRECISIONS:
        raise ValueError(f"bad value {precision!r} for precision; choose from: {', '.join(PRECISIONS)}")
    if precision == "bf16" and dtype != "float32":
        raise ValueError(f"precision bf16 needs dtype float32 (autocast with float32 hypergradients), got "
                         f"dtype {dtype}")
    return precision

def autocast_objective(fn: Callable[[Any, Any], torch.Tensor], dtype: torch.dtype = torch.float32,
                       device_type: str = "cpu") -> Callable[[Any, Any], torch.Tensor]:
    """Run ``fn(x, y)`` under ``torch.autocast(device_type, dtype=torch.bfloat16)`` and return a ``dtype`` scalar.

    Parameters
    ----------
    fn : callable
        An objective ``f(x, y) -> scalar tensor``.
    dtype : torch.dtype
        Dtype of the returned value (float32: the hypergradient is accumulated in float32).
    device_type : {"cpu", "cuda"}
        The type of the device the objective computes on (the run's device: autocast acts on one device type).

    Returns
    -------
    callable
    """
    def wrapped(x: Any, y: Any) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            value = fn(x, y)
        return value.to(dtype)

    wrapped.__name__ = getattr(fn, "__name__", "objective") + "_bf16"
    wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapped


def autocast_objectives(pair: Tuple[Callable, Callable], precision: str,
                        device_type: str = "cpu") -> Tuple[Callable, Callable]:
    """The ``(upper, lower)`` of ``TaskRun.objectives(t)`` for a precision (unchanged for ``fp32``).

    Parameters
    ----------
    pair : (callable, callable)
    precision : {"fp32", "bf16"}
    device_type : {"cpu", "cuda"}
        The type of the run's device (where autocast acts).

    Returns
    -------
    (callable, callable)
    """
    if precision == "fp32":
        return pair
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    upper, lower = pair
    return (autocast_objective(upper, device_type=device_type),
            autocast_objective(lower, device_type=device_type))


# ------------------------------------------------------------------------------------------ signals
class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM (a ``KeyboardInterrupt``, so ``except Exception`` does not catch it).

    Attributes
    ----------
    signum : int
        The signal.
    signame : str
        Its name (``SIGINT``, ``SIGTERM``).
    exit_status : int
        ``128 + signum``, the status of ``bilevel run``: 130 for SIGINT, 143 for SIGTERM.
    checkpoint : Path or None
        The checkpoint of the last completed step (set by the runner; None when there is none).
    """

    def __init__(self, signum: int, message: Optional[str] = None):
        self.signum = int(signum)
        try:
            self.signame = signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - not a known signal
            self.signame = f"signal {self.signum}"
        self.checkpoint: Any = None
        super().__init__(message or f"interrupted by {self.signame}")

    def __reduce__(self) -> Any:  # picklable (e.g. out of a process pool's worker) with its message
        return type(self), (self.signum, self.args[0] if self.args else None), {"checkpoint": self.checkpoint}

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager turning SIGINT / SIGTERM into :class:`RunInterrupted` while it is active.

    A signal raises :class:`RunInterrupted` at once, except inside :meth:`deferred` (where the runner saves a
    checkpoint or takes a snapshot): there the first signal is only recorded in ``received`` and raised by the
    next :meth:`check`; a second one raises at once. The handlers are installed only in the main thread
    (elsewhere, or with ``enabled=False``, nothing changes) and the previous handlers are restored on exit.

    Parameters
    ----------
    enabled : bool
        Install the handlers.
    """

    SIGNALS: Tuple[str, ...] = ("SIGINT", "SIGTERM")

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: Optional[int] = None
        self._defer = False
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                num = getattr(signal, name, None)
                if num is None:  # pragma: no cover - platform without it
                    continue
                try:
                    self._previous[num] = signal.signal(num, self._handle)
                except (ValueError, OSError):  # pragma: no cover - e.g. not the main interpreter
                    pass
        return self

    def __exit__(self, *exc: Any) -> bool:
        for num, previous in self._previous.items():
            try:
                signal.signal(num, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._previous = {}
        return False

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not self._defer or not first:
            raise RunInterrupted(signum)

    def check(self) -> None:
        """Raise :class:`RunInterrupted` when a signal was received (and deferred)."""
        if self.received is not None:
            raise RunInterrupted(self.received)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block during which a first signal is only recorded."""
        previous, self._defer = self._defer, True
        try:
            yield
        finally:
            self._defer = previous


__all__ = ["EXIT_DIVERGED", "PRECISIONS", "DivergenceError", "GuardOptions", "Guards", "RunInterrupted",
           "StopSignals", "autocast_objective", "autocast_objectives", "check_precision", "guarded_step",
           "objective_values"]
